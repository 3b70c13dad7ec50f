package cluster_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/internal/cni"
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
// place), none failed. It logs the slowest pod and the
// FailedCreatePodSandBox events of pods whose network was set up while no
// agent held a valid token (they wait and start by themselves; agent-down
// asserts that case, which the timing here may or may not hit).
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

// firstConf is the configuration containerd loads from the conf dir (its
// CRI plugin, like libcni, takes the first file by name with a .conf,
// .conflist or .json extension) and whether it ends with tether-cni's
// entry.
func firstConf(dir string) (path string, last bool, err error) {
	var names []string
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", false, err
	}
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".conf" || ext == ".conflist" || ext == ".json") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", false, fmt.Errorf("no network configuration in %s", dir)
	}
	slices.Sort(names)
	path = filepath.Join(dir, names[0])
	list, err := readConflist(path)
	if err != nil {
		return path, false, err
	}
	ps := list["plugins"].([]any)
	lastType, _ := ps[len(ps)-1].(map[string]any)["type"].(string)
	return path, lastType == cni.PluginType, nil
}

func readConflist(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var list map[string]any
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, ok := list["plugins"].([]any); !ok {
		return nil, fmt.Errorf("%s: no plugins list", path)
	}
	return list, nil
}

// writeAsInstaller writes list to path as a CNI installer does: a
// temporary file in the same folder (a dot name no runtime loads),
// renamed over path.
func writeAsInstaller(t *testing.T, path string, list map[string]any) {
	t.Helper()
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".installer.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// withoutTether is the conflist at path without tether-cni's entry: the
// network configuration as the node's primary CNI installer writes it.
func withoutTether(t *testing.T, path string) map[string]any {
	t.Helper()
	list, err := readConflist(path)
	if err != nil {
		t.Fatal(err)
	}
	list["plugins"] = slices.DeleteFunc(list["plugins"].([]any), func(p any) bool {
		return p.(map[string]any)["type"] == cni.PluginType
	})
	return list
}

// waitEntryInFirst waits (polling every 100 ms) until the configuration
// containerd loads ends with tether-cni's entry again, and returns how
// long that took and that file.
func waitEntryInFirst(t *testing.T, conf string, since time.Time, bound time.Duration) (string, time.Duration) {
	t.Helper()
	for {
		path, ok, err := firstConf(conf)
		if ok {
			return path, time.Since(since)
		}
		if time.Since(since) > bound {
			t.Fatalf("tether-cni's entry not back at the end of the configuration containerd loads within %s: %s: %v", bound, path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentGet GETs path of the node agent's admin port (/metrics, /readyz)
// from the node, the way a scraper on the node network does.
func (s *storyRun) agentGet(t *testing.T, path string) string {
	t.Helper()
	p := s.n.pod(t, "kube-system", "app.kubernetes.io/name=tether-cni-node")
	out, err := s.n.run(time.Minute, "", "exec.sh", "curl", "-sS", "--max-time", "10", "-w", "\nHTTP %{http_code}\n", "http://"+p.Status.PodIP+":15025"+path)
	if err != nil {
		t.Fatalf("GET %s of %s: %v", path, p.Name, err)
	}
	return out
}

// entryRepairs is tether_cni_node_repairs_total{object="entry"} of the
// running agent.
func (s *storyRun) entryRepairs(t *testing.T) float64 {
	t.Helper()
	const name = `tether_cni_node_repairs_total{object="entry"} `
	for _, l := range strings.Split(s.agentGet(t, "/metrics"), "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s%s: %v", name, v, err)
			}
			return f
		}
	}
	return 0
}

// createValidated creates the bare meshed pod name in the story namespace
// and checks that it becomes Ready with tether-validate passed.
func (s *storyRun) createValidated(t *testing.T, name string) corev1.Pod {
	t.Helper()
	s.n.must(t, time.Minute, runArgs(name, "sleep", "1h")...)
	p := s.meshedPodOutcome(t, name, 3*time.Minute)
	if err := validated(p); err != nil {
		t.Errorf("pod %s: %v", name, err)
	}
	return p
}

// vethsWithMTU counts the node's pod interfaces (host side of the veths)
// with MTU mtu.
func (s *storyRun) vethsWithMTU(t *testing.T, mtu int) int {
	t.Helper()
	out, err := s.n.run(time.Minute, "", "exec.sh", "ip", "-o", "link", "show", "type", "veth")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(out, fmt.Sprintf(" mtu %d ", mtu))
}

// confDirState is the conf dir's configuration files and their contents.
func confDirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		st[e.Name()] = string(b)
	}
	return st
}

// repairBound is how soon the agent (--repair-interval 2s) must put the
// entry back.
const repairBound = 10 * time.Second

// conflistRewrite: (a) another installer rewrites the node's conflist
// without the entry (same file, atomic rename): the agent puts it back
// within repairBound and counts the repair in
// tether_cni_node_repairs_total{object="entry"}; a meshed pod created
// afterwards is captured. (b) A new CNI installer drops a conflist that
// sorts first (with bridge MTU 1400, to see which file containerd used):
// the agent chains tether-cni into that file, the one containerd loads; a
// meshed pod created afterwards has MTU 1400 (containerd used the new file)
// and is captured. Removing the file puts the node back as before.
func (s *storyRun) conflistRewrite(t *testing.T) {
	conf, _ := s.n.cniDirs(t)
	orig, ok, err := firstConf(conf)
	if err != nil || !ok {
		t.Fatalf("before: %s ends with tether-cni's entry: %v, %v", orig, ok, err)
	}
	names := []string{}
	t.Cleanup(func() {
		os.Remove(filepath.Join(conf, "00-new-installer.conflist"))
		if !t.Failed() && len(names) > 0 {
			s.n.kubectl(2*time.Minute, append([]string{"-n", story, "delete", "pod", "--wait=false"}, names...)...)
		}
	})

	before := s.entryRepairs(t)
	start := time.Now()
	writeAsInstaller(t, orig, withoutTether(t, orig))
	if _, ok, _ := firstConf(conf); ok {
		t.Fatalf("the rewrite left the entry in %s", orig)
	}
	path, took := waitEntryInFirst(t, conf, start, repairBound)
	if path != orig {
		t.Errorf("the entry came back in %s, want %s", path, orig)
	}
	t.Logf("(a) %s rewritten without the entry: back after %s", filepath.Base(orig), took.Round(100*time.Millisecond))
	if after := s.entryRepairs(t); after < before+1 {
		t.Errorf("tether_cni_node_repairs_total{object=\"entry\"} %v before the rewrite, %v after: the repair was not counted", before, after)
	} else {
		t.Logf("tether_cni_node_repairs_total{object=\"entry\"}: %v -> %v", before, after)
	}
	names = append(names, "rewrite-a")
	s.createValidated(t, "rewrite-a")

	// (b) A new conflist that sorts first.
	state := confDirState(t, conf)
	if n := s.vethsWithMTU(t, 1400); n != 0 {
		t.Fatalf("%d pod interfaces already have MTU 1400: the check below could not tell which file containerd used", n)
	}
	newConf := filepath.Join(conf, "00-new-installer.conflist")
	list := withoutTether(t, orig)
	list["plugins"].([]any)[0].(map[string]any)["mtu"] = 1400
	start = time.Now()
	writeAsInstaller(t, newConf, list)
	path, took = waitEntryInFirst(t, conf, start, repairBound)
	if path != newConf {
		t.Fatalf("the entry is at the end of %s, want the new first file %s", path, newConf)
	}
	t.Logf("(b) new first conflist %s: tether-cni chained into it after %s", filepath.Base(newConf), took.Round(100*time.Millisecond))
	names = append(names, "rewrite-b")
	s.createValidated(t, "rewrite-b")
	if n := s.vethsWithMTU(t, 1400); n != 1 {
		t.Errorf("%d pod interfaces with MTU 1400 after creating one pod with the new file in place: containerd did not use %s", n, filepath.Base(newConf))
	} else {
		t.Logf("the pod created with the new file has MTU 1400: containerd used %s, and tether-cni captured it", filepath.Base(newConf))
	}
	s.n.must(t, 2*time.Minute, "-n", story, "delete", "pod", "rewrite-b", "--timeout=90s")
	if err := os.Remove(newConf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // more than a repair interval
	if got := confDirState(t, conf); !maps.Equal(got, state) {
		t.Errorf("after removing %s the conf dir is not as before:\n%v\nwant\n%v", filepath.Base(newConf), got, state)
	}
	if out := s.agentGet(t, "/readyz"); !strings.Contains(out, "HTTP 200") {
		t.Errorf("the agent's /readyz after removing the new file: %s", out)
	}
}
