package cluster_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/pkg/inject"
)

// agentDS is the node agent's DaemonSet, as kubectl names it.
const agentDS = "daemonset/tether-cni-node"

// entryWatch samples the node's CNI configuration every 200 ms, as
// containerd would read it, and records every moment tether-cni's chain
// entry was not in it.
type entryWatch struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	samples int
	missing []string // "time: why" of each sample without the entry
}

// watchEntry starts sampling the node's conf dir.
func (s *storyRun) watchEntry(t *testing.T) *entryWatch {
	conf, _ := s.n.cniDirs(t)
	w := &entryWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			ok, err := chainHasTether(conf)
			w.mu.Lock()
			w.samples++
			if !ok {
				w.missing = append(w.missing, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { w.end() })
	return w
}

// end stops the sampling (again is fine) and returns the samples taken and
// those without the entry.
func (w *entryWatch) end() (int, []string) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samples, slices.Clone(w.missing)
}

// meshedPodOutcome waits until the bare meshed pod name (runArgs) of the
// story namespace is Ready or Failed, and returns it.
func (s *storyRun) meshedPodOutcome(t *testing.T, name string, timeout time.Duration) corev1.Pod {
	t.Helper()
	var p corev1.Pod
	eventually(t, "pod "+name+" Ready or Failed", timeout, time.Second, func() error {
		s.n.getJSON(t, &p, "-n", story, "get", "pod", name, "-o", "json")
		if p.Status.Phase == corev1.PodFailed || podReady(p) {
			return nil
		}
		return fmt.Errorf("phase %s", p.Status.Phase)
	})
	return p
}

// validated reports nil when pod p is Ready with tether-validate exited 0
// (the redirection was in place when its app started), else what it saw.
func validated(p corev1.Pod) error {
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name != inject.ValidateContainerName {
			continue
		}
		if term := cs.State.Terminated; term == nil || term.ExitCode != 0 {
			msg := ""
			if term != nil {
				msg = strings.TrimSpace(term.Message)
			}
			return fmt.Errorf("phase %s; %s: %+v %s", p.Status.Phase, cs.Name, cs.State, msg)
		}
		if !podReady(p) {
			return fmt.Errorf("phase %s, not Ready", p.Status.Phase)
		}
		return nil
	}
	return fmt.Errorf("phase %s; no %s status", p.Status.Phase, inject.ValidateContainerName)
}

// readyAfter is how long pod p took from its creation to Ready.
func readyAfter(p corev1.Pod) time.Duration {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return c.LastTransitionTime.Sub(p.CreationTimestamp.Time)
		}
	}
	return 0
}

// sandboxEvents returns the FailedCreatePodSandBox messages of the story
// namespace's pod name.
func (s *storyRun) sandboxEvents(t *testing.T, name string) []string {
	var events corev1.EventList
	s.n.getJSON(t, &events, "-n", story, "get", "events", "--field-selector",
		"reason=FailedCreatePodSandBox,involvedObject.name="+name, "-o", "json")
	var msgs []string
	for _, e := range events.Items {
		msgs = append(msgs, e.Message)
	}
	return msgs
}

// agentRestart: `kubectl rollout restart` of the node agent while meshed
// pods are created, one a second, over the whole restart: the chain
// entry never leaves the node's conflist (sampled every 200 ms), and
// every pod ends Ready with tether-validate passed (the redirection was in
// place), none failed; a pod whose network was set up while no agent held
// a valid token waited (FailedCreatePodSandBox) and started by itself.
func (s *storyRun) agentRestart(t *testing.T) {
	w := s.watchEntry(t)
	before := s.n.must(t, time.Minute, "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=tether-cni-node", "-o", "name")
	start := time.Now()
	s.n.must(t, time.Minute, "-n", "kube-system", "rollout", "restart", agentDS)
	rollout := s.n.start(t, 4*time.Minute, "kubectl.sh", "-n", "kube-system", "rollout", "status", agentDS, "--timeout=3m")
	var names []string
	t.Cleanup(func() {
		if !t.Failed() && len(names) > 0 {
			s.n.kubectl(2*time.Minute, append([]string{"-n", story, "delete", "pod", "--wait=false"}, names...)...)
		}
	})
	rolledOut := time.Time{}
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("restart-%d", i)
		s.n.must(t, time.Minute, runArgs(name, "sleep", "1h")...)
		names = append(names, name)
		select {
		case <-rollout.done:
			if rolledOut.IsZero() {
				rolledOut = time.Now()
			}
		default:
		}
		// Two more pods once the new agent is ready, then stop.
		if !rolledOut.IsZero() && time.Since(rolledOut) > 2*time.Second {
			break
		}
		time.Sleep(time.Second)
	}
	if err := rollout.wait(4 * time.Minute); err != nil {
		t.Fatalf("the restart of the node agent: %v", err)
	}
	t.Logf("restart rolled out in %s (agent before: %s); %d meshed pods created over it",
		time.Since(start).Round(100*time.Millisecond), strings.TrimSpace(before), len(names))

	var slowest time.Duration
	var slowestName string
	for _, name := range names {
		p := s.meshedPodOutcome(t, name, 3*time.Minute)
		if err := validated(p); err != nil {
			t.Errorf("pod %s created during the restart: %v", name, err)
			continue
		}
		if d := readyAfter(p); d > slowest {
			slowest, slowestName = d, name
		}
	}
	samples, missing := w.end()
	if len(missing) > 0 {
		t.Errorf("the chain entry was missing from the node's conflist in %d of %d samples: %s", len(missing), samples, strings.Join(missing, "; "))
	} else {
		t.Logf("the chain entry was in the node's conflist in all %d samples (every 200 ms)", samples)
	}
	t.Logf("slowest pod: %s, Ready %s after its creation", slowestName, slowest.Round(100*time.Millisecond))
	seen := 0
	for _, name := range names {
		for _, m := range s.sandboxEvents(t, name) {
			if seen++; seen == 1 {
				t.Logf("FailedCreatePodSandBox of %s: %s", name, m)
			}
		}
	}
	t.Logf("%d FailedCreatePodSandBox events for the pods created during the restart", seen)
}
