package cluster_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/internal/cni"
	"github.com/tether-mesh/tether/pkg/inject"
)

// enforceLabel is Pod Security admission's enforce label.
const enforceLabel = "pod-security.kubernetes.io/enforce"

// cniDirs are containerd's CNI configuration and plugin directories on
// the node (hack/cluster: etc/cni and state/cni-bin of its directory; the
// node's mount namespace sees the host's paths, so a hostPath of them is
// the same directory). The plugin directory is the node's own, never the
// host's /usr/lib/cni.
func (n *node) cniDirs(t *testing.T) (conf, bin string) {
	t.Helper()
	conf, bin = filepath.Join(n.clusterDir(), "etc", "cni"), filepath.Join(n.clusterDir(), "state", "cni-bin")
	for _, d := range []string{conf, bin} {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("the node's CNI directory: %v (a node of an older hack/cluster? rebuild with hack/cluster/build.sh and run cluster up again)", err)
		}
	}
	return conf, bin
}

// cniFlags are the install and uninstall flags of the story's mode: none
// in init mode; in CNI mode the mode and the node's CNI directories.
func (s *storyRun) cniFlags(t *testing.T) string {
	if s.mode != modeCNI {
		return ""
	}
	conf, bin := s.n.cniDirs(t)
	return fmt.Sprintf(" --redirect-mode cni --set cni.confDir=%s,cni.binDir=%s", conf, bin)
}

// nodeAgentInstalled checks (waiting up to two minutes) that the node's
// CNI configuration holds the tether-cni chain entry and its plugin
// directory the plugin, or, with want false, that neither is left.
func (s *storyRun) nodeAgentInstalled(t *testing.T, want bool) {
	t.Helper()
	conf, bin := s.n.cniDirs(t)
	eventually(t, fmt.Sprintf("tether-cni installed on the node: %v", want), 2*time.Minute, time.Second, func() error {
		entry, err := chainHasTether(conf)
		if err != nil {
			return err
		}
		_, serr := os.Stat(filepath.Join(bin, cni.PluginType))
		if entry != want || (serr == nil) != want {
			return fmt.Errorf("chain entry in %s: %v; plugin in %s: %v", conf, entry, bin, serr)
		}
		return nil
	})
}

// chainHasTether says whether a conflist of dir chains the tether-cni plugin.
func chainHasTether(dir string) (bool, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.conflist"))
	if err != nil || len(files) == 0 {
		return false, fmt.Errorf("no conflist in %s: %v", dir, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return false, err
		}
		var list struct {
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(data, &list); err != nil {
			return false, fmt.Errorf("%s: %w", f, err)
		}
		for _, p := range list.Plugins {
			if p.Type == cni.PluginType {
				return true, nil
			}
		}
	}
	return false, nil
}

// restrictedOverrides is a pod and container securityContext Pod Security
// restricted admits, for pods the test creates with kubectl run.
const restrictedOverrides = `{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":10001,"runAsGroup":10001,"seccompProfile":{"type":"RuntimeDefault"}},` +
	`"containers":[{"name":%q,"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}`

// runArgs are kubectl's arguments to run a bare tether-sample pod in the
// story namespace, one that Pod Security restricted admits (the namespace
// enforces it in CNI mode).
func runArgs(name string, sample ...string) []string {
	return append([]string{"-n", story, "run", name, "--image=tether-sample:latest", "--restart=Never",
		"--override-type=strategic", "--overrides=" + fmt.Sprintf(restrictedOverrides, name), "--command", "--", "tether-sample"}, sample...)
}

// restricted: in CNI mode the story namespace enforces Pod Security
// restricted, and means it: the injected pods were admitted there, while
// a pod asking for NET_ADMIN (what tether-init needs) is refused by the
// API server naming the capability.
func (s *storyRun) restricted(t *testing.T) {
	var ns corev1.Namespace
	s.n.getJSON(t, &ns, "get", "namespace", story, "-o", "json")
	if got := ns.Labels[enforceLabel]; got != "restricted" {
		t.Fatalf("namespace %s: %s=%q, want restricted", story, enforceLabel, got)
	}
	over := `{"spec":{"containers":[{"name":"netadmin","securityContext":{"capabilities":{"add":["NET_ADMIN"]}}}]}}`
	_, err := s.n.kubectl(time.Minute, "-n", story, "run", "netadmin", "--image=tether-sample:latest", "--restart=Never",
		"--override-type=strategic", "--overrides="+over, "--dry-run=server", "--command", "--", "tether-sample", "sleep", "1h")
	if err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) || !strings.Contains(err.Error(), "NET_ADMIN") {
		t.Errorf("a pod asking for NET_ADMIN in %s: %v, want refused by PodSecurity restricted naming NET_ADMIN", story, err)
	} else {
		t.Logf("refused: %s", lastStderrLine(err))
	}
	for _, a := range apps {
		p := s.n.pod(t, story, "app="+a)
		for _, c := range p.Spec.InitContainers {
			if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
				t.Errorf("pod %s: container %s adds capabilities %v", p.Name, c.Name, sc.Capabilities.Add)
			}
		}
	}
}

// agentDown: while the node agent is not on the node (its DaemonSet
// selects no node, so its pod exits and takes the chain entry out), a
// meshed pod created in the story namespace gets its network without the
// redirection: tether-validate fails it saying so, and neither the sidecar
// nor the app container ever runs. Once the agent is back, the same pod
// starts, validated.
func (s *storyRun) agentDown(t *testing.T) {
	const ds = "daemonset/tether-cni-node"
	restore := func() error {
		_, err := s.n.kubectl(time.Minute, "-n", "kube-system", "patch", ds, "--type=json",
			"-p", `[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]`)
		return err
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			restore()
		}
	})
	s.n.must(t, time.Minute, "-n", "kube-system", "patch", ds, "--type=merge",
		"-p", `{"spec":{"template":{"spec":{"nodeSelector":{"tether.dev/no-such-node":"true"}}}}}`)
	s.n.must(t, 3*time.Minute, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name=tether-cni-node", "--timeout=2m")
	s.nodeAgentInstalled(t, false)

	s.n.must(t, time.Minute, runArgs("unprotected", "sleep", "1h")...)
	var p corev1.Pod
	eventually(t, "the pod created without the node agent fails", 3*time.Minute, 2*time.Second, func() error {
		s.n.getJSON(t, &p, "-n", story, "get", "pod", "unprotected", "-o", "json")
		if p.Status.Phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	validated := false
	for _, cs := range p.Status.InitContainerStatuses {
		switch {
		case cs.Name == inject.ValidateContainerName:
			validated = true
			term := cs.State.Terminated
			if term == nil || term.ExitCode == 0 || !strings.Contains(term.Message, "NOT redirected to the sidecar") {
				t.Errorf("%s of the pod created without the node agent: %+v, want a failure saying the traffic is not redirected", cs.Name, cs.State)
			} else {
				t.Logf("%s failed (exit %d): %s", cs.Name, term.ExitCode, strings.TrimSpace(term.Message))
			}
		case cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil:
			t.Errorf("container %s ran after tether-validate failed: %+v", cs.Name, cs.State)
		}
	}
	if !validated {
		t.Errorf("the pod has no %s status: %+v", inject.ValidateContainerName, p.Status.InitContainerStatuses)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil {
			t.Errorf("app container %s ran without the redirection: %+v", cs.Name, cs.State)
		}
	}

	if err := restore(); err != nil {
		t.Fatalf("putting the node agent back: %v", err)
	}
	restored = true
	s.n.must(t, 6*time.Minute, "-n", "kube-system", "rollout", "status", ds, "--timeout=5m")
	s.nodeAgentInstalled(t, true)
	s.n.must(t, 2*time.Minute, "-n", story, "delete", "pod", "unprotected", "--timeout=90s")
	s.n.must(t, time.Minute, runArgs("unprotected", "sleep", "1h")...)
	s.n.must(t, 3*time.Minute, "-n", story, "wait", "--for=condition=Ready", "pod/unprotected", "--timeout=2m")
	s.n.getJSON(t, &p, "-n", story, "get", "pod", "unprotected", "-o", "json")
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name == inject.ValidateContainerName && (cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0) {
			t.Errorf("with the node agent back, %s: %+v, want exit 0", cs.Name, cs.State)
		}
	}
}
