package cluster_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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

// agentDown: the node agent leaves the node while its DaemonSet stays
// (its nodeSelector matches no node; an eviction or a node drain does the
// same): the chain entry, the plugin and its kubeconfig stay, but the
// kubeconfig's token was bound to the agent's deleted pod. Two meshed pods
// are created while no agent runs:
//   - "unprotected", with the entry taken out of the conflist on disk (as
//     a crashed agent or another installer leaves the node): its network
//     has no redirection, tether-validate fails it saying so, and neither
//     the sidecar nor the app ever runs;
//   - "waiting", with the entry back as the agent's exit left it: the
//     plugin fails its sandbox, the event saying that tether-cni-node is
//     not running on the node, and none of its containers runs; once the
//     agent is back it starts by itself, validated, without being
//     recreated.
func (s *storyRun) agentDown(t *testing.T) {
	restore := func() error {
		_, err := s.n.kubectl(time.Minute, "-n", "kube-system", "patch", agentDS, "--type=json",
			"-p", `[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]`)
		return err
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			restore()
		}
	})
	conf, _ := s.n.cniDirs(t)
	s.n.must(t, time.Minute, "-n", "kube-system", "patch", agentDS, "--type=merge",
		"-p", `{"spec":{"template":{"spec":{"nodeSelector":{"tether.dev/no-such-node":"true"}}}}}`)
	s.n.must(t, 3*time.Minute, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name=tether-cni-node", "--timeout=2m")
	path, ok, err := firstConf(conf)
	if err != nil || !ok {
		t.Fatalf("with the agent's DaemonSet still there, its exit took the entry out of %s (%v): pods created now would get no redirection", path, err)
	}
	if _, err := os.Stat(filepath.Join(conf, "tether-cni.kubeconfig")); err != nil {
		t.Fatalf("the agent's exit removed the plugin's kubeconfig: %v", err)
	}
	t.Logf("the agent left the node; its entry stays in %s", filepath.Base(path))
	left, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// The entry taken out on disk: the pod gets no redirection and fails.
	writeAsInstaller(t, path, withoutTether(t, path))
	time.Sleep(time.Second) // containerd reloads its CNI configuration
	s.n.must(t, time.Minute, runArgs("unprotected", "sleep", "1h")...)
	s.failsValidation(t, "unprotected")

	// The entry back as the agent's exit left it: the pod waits.
	if err := os.WriteFile(path, left, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	s.n.must(t, time.Minute, runArgs("waiting", "sleep", "1h")...)
	const want = "tether-cni-node on node tether-node is not running or has not renewed its token; the pod waits and starts once tether-cni-node runs on the node again"
	eventually(t, "a FailedCreatePodSandBox event of pod waiting with the plugin's message", 2*time.Minute, 2*time.Second, func() error {
		msgs := s.sandboxEvents(t, "waiting")
		for _, m := range msgs {
			if strings.Contains(m, want) {
				t.Logf("event: %s", m)
				return nil
			}
		}
		return fmt.Errorf("events %q, want one containing %q", msgs, want)
	})
	var p corev1.Pod
	s.n.getJSON(t, &p, "-n", story, "get", "pod", "waiting", "-o", "json")
	if p.Status.Phase != corev1.PodPending {
		t.Errorf("pod waiting is %s while the agent is away, want Pending", p.Status.Phase)
	}
	for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
		if cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil {
			t.Errorf("container %s of pod waiting ran while the agent was away: %+v", cs.Name, cs.State)
		}
	}

	if err := restore(); err != nil {
		t.Fatalf("putting the node agent back: %v", err)
	}
	restored = true
	back := time.Now()
	s.n.must(t, 6*time.Minute, "-n", "kube-system", "rollout", "status", agentDS, "--timeout=5m")
	s.nodeAgentInstalled(t, true)
	p = s.meshedPodOutcome(t, "waiting", 3*time.Minute)
	if err := validated(p); err != nil {
		t.Errorf("pod waiting once the agent is back: %v", err)
	} else {
		t.Logf("pod waiting Ready %s after the agent was put back, %s after its creation, not recreated",
			time.Since(back).Round(time.Second), readyAfter(p).Round(time.Second))
	}
	s.n.must(t, 2*time.Minute, "-n", story, "delete", "pod", "unprotected", "waiting", "--timeout=90s")
}

// failsValidation waits for the bare meshed pod name to fail, and checks
// that tether-validate failed it saying the traffic is not redirected and
// that neither the sidecar nor the app ever ran.
func (s *storyRun) failsValidation(t *testing.T, name string) {
	t.Helper()
	var p corev1.Pod
	eventually(t, "pod "+name+" fails", 3*time.Minute, 2*time.Second, func() error {
		s.n.getJSON(t, &p, "-n", story, "get", "pod", name, "-o", "json")
		if p.Status.Phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		return nil
	})
	found := false
	for _, cs := range p.Status.InitContainerStatuses {
		switch {
		case cs.Name == inject.ValidateContainerName:
			found = true
			term := cs.State.Terminated
			if term == nil || term.ExitCode == 0 || !strings.Contains(term.Message, "NOT redirected to the sidecar") {
				t.Errorf("%s of pod %s: %+v, want a failure saying the traffic is not redirected", cs.Name, name, cs.State)
			} else {
				t.Logf("%s of %s failed (exit %d): %s", cs.Name, name, term.ExitCode, strings.TrimSpace(term.Message))
			}
		case cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil:
			t.Errorf("container %s of pod %s ran after tether-validate failed: %+v", cs.Name, name, cs.State)
		}
	}
	if !found {
		t.Errorf("pod %s has no %s status: %+v", name, inject.ValidateContainerName, p.Status.InitContainerStatuses)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil {
			t.Errorf("app container %s of pod %s ran without the redirection: %+v", cs.Name, name, cs.State)
		}
	}
}

// agentUninstalled: the operator deletes the node agent only (docs/cni.md:
// `kubectl -n kube-system delete daemonset tether-cni-node`, as when
// switching back to init mode): the entry, the plugin and its kubeconfig
// leave the node. The meshed pods already running keep their rules, so
// their mesh: the chain still works over mTLS, a policy still refuses, and
// a plaintext request from outside the mesh to a meshed pod's IP is still
// refused by its sidecar. A meshed pod created then fails tether-validate
// and never runs. The agent is then installed again.
func (s *storyRun) agentUninstalled(t *testing.T) {
	s.n.must(t, 3*time.Minute, "-n", "kube-system", "delete", agentDS, "--timeout=2m")
	s.n.must(t, 3*time.Minute, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name=tether-cni-node", "--timeout=2m")
	s.nodeAgentInstalled(t, false)
	conf, _ := s.n.cniDirs(t)
	if _, err := os.Stat(filepath.Join(conf, "tether-cni.kubeconfig")); !os.IsNotExist(err) {
		t.Errorf("the plugin's kubeconfig after the agent was deleted: %v", err)
	}
	t.Cleanup(func() {
		s.sh(t, 3*time.Minute, "tether install -f "+filepath.Join(s.n.root, "test/cluster/testdata/values.yaml")+s.cniFlags(t)+" | kubectl apply --server-side -f -")
		s.n.must(t, 6*time.Minute, "-n", "kube-system", "rollout", "status", agentDS, "--timeout=5m")
		s.nodeAgentInstalled(t, true)
		s.n.kubectl(2*time.Minute, "-n", story, "delete", "pod", "noagent", "--wait=false")
	})

	// The running pods' mesh.
	s.chain(t)
	podURL := "http://" + netip.AddrPortFrom(s.podIP(t, story, "db"), 8080).String() + "/"
	out, err := s.n.kubectl(time.Minute, "-n", plain, "exec", "deploy/web", "-c", "app", "--", "tether-sample", "get", "--timeout", "5s", podURL)
	if err == nil {
		t.Errorf("plaintext from the plain namespace to db's pod IP %s was answered with the agent gone: %q", podURL, out)
	} else {
		t.Logf("plaintext to db's pod %s refused: %s", podURL, lastLine(err))
	}
	s.n.mustIn(t, time.Minute, template(t, "deny-web-to-db.yaml"), "apply", "-f", "-")
	svcAddr := strings.TrimSpace(s.n.must(t, time.Minute, "-n", story, "get", "service", "db", "-o", "jsonpath={.spec.clusterIP}")) + ":8080"
	eventually(t, "web's connection to db's ClusterIP refused by the policy", time.Minute, time.Second, func() error {
		out, code, err := s.fromWeb("dial", svcAddr)
		if code != 1 {
			return fmt.Errorf("dial %s: want exit 1, got exit %d: %q %v", svcAddr, code, out, err)
		}
		return nil
	})
	s.n.must(t, time.Minute, "-n", story, "delete", "accesspolicy", "db-from-api-only")

	// A new meshed pod.
	s.n.must(t, time.Minute, runArgs("noagent", "sleep", "1h")...)
	s.failsValidation(t, "noagent")
}
