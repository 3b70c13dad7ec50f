package cluster_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tether-mesh/tether/internal/version"
	"github.com/tether-mesh/tether/pkg/inject"
)

const (
	story = "story" // the namespace in the mesh
	plain = "plain" // the same apps without the mesh
	// runCommand is how to run this test, said when it skips.
	runCommand = "make image && make cluster-up && TETHER_CLUSTER_TEST=1 go test -timeout 50m -v ./test/cluster"
)

// apps are the story's chain, web -> api -> db, each its own ServiceAccount.
var apps = []string{"web", "api", "db"}

// Redirect modes of the story (the chart's injector.redirectMode).
const (
	modeInit = "init" // tether-init in every pod; the namespace allows privileged
	modeCNI  = "cni"  // the tether-cni plugin; the namespace enforces restricted
)

// storyRun is one run of the user story against the node.
type storyRun struct {
	n      *node
	mode   string // modeInit or modeCNI
	marker string // in every request and answer of the apps

	mu     sync.Mutex
	stages []string // "name: duration" in order
	dumped bool     // the cluster's state was logged at the first failure
}

// TestUserStory installs Tether on the real node and runs the user story of
// issue 13 against it, each claim its own subtest, in order (later stages
// build on earlier ones). It needs the cluster of hack/cluster with the
// images of `make image` (tether:VERSION, tether-sample:latest).
func TestUserStory(t *testing.T) { runStory(t, modeInit) }

// TestUserStoryCNI runs the same story with Tether installed in CNI mode
// (`tether install --redirect-mode cni`, the node agent tether-cni-node
// installing tether-cni into the node's own CNI directories) and the story
// namespace enforcing Pod Security restricted: no tether-init, the
// tether-validate init passes, and the same mTLS, policy and rotation
// stages prove that the plugin captured the traffic.
func TestUserStoryCNI(t *testing.T) { runStory(t, modeCNI) }

// runStory runs the user story in one redirect mode.
func runStory(t *testing.T, mode string) {
	if os.Getenv("TETHER_CLUSTER_TEST") != "1" {
		t.Skip("the real-node test runs only when asked (it needs a running cluster); run: " + runCommand)
	}
	if os.Geteuid() != 0 {
		t.Skip("the real-node test needs root: hack/cluster/kubectl.sh and exec.sh enter the node's namespaces with nsenter")
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < 20*time.Minute {
		t.Fatalf("the story takes 10 to 15 minutes but go test's -timeout leaves %s: run %s", time.Until(dl).Round(time.Second), runCommand)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{root: root}
	if _, err := os.Stat(n.script("kubectl.sh")); err != nil {
		t.Fatalf("hack/cluster/kubectl.sh is missing (%v): this tree has no real-node cluster scripts", err)
	}
	if _, err := n.kubectl(30*time.Second, "get", "--raw", "/readyz"); err != nil {
		t.Fatalf("no cluster answers; start one with `make image && make cluster-up`: %v", err)
	}
	s := &storyRun{n: n, mode: mode, marker: "tether-marker-" + randomHex(t, 8)}
	t.Logf("redirect mode %s; marker of this run: %s", mode, s.marker)
	start := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("namespaces %s and %s are left for inspection; the next run deletes them", story, plain)
		} else {
			n.kubectl(time.Minute, "delete", "namespace", story, plain, "--ignore-not-found", "--wait=false")
		}
		if tetherCLIPath != "" {
			os.RemoveAll(filepath.Dir(tetherCLIPath))
			// The next story of this binary builds it again.
			tetherCLIOnce, tetherCLIPath = sync.Once{}, ""
		}
		s.mu.Lock()
		t.Logf("stages (total %s):\n  %s", time.Since(start).Round(time.Second), strings.Join(s.stages, "\n  "))
		s.mu.Unlock()
	})

	s.stage(t, "leftovers", s.removeLeftovers)
	// The guide (docs/guide.md) installs in init mode; it runs once.
	if mode == modeInit && !s.stage(t, "guide", s.guide) {
		t.FailNow()
	}
	s.stage(t, "check-pre", s.checkPre)
	if !s.stage(t, "install", s.install) || !s.stage(t, "deploy", s.deploy) {
		t.FailNow()
	}
	s.stage(t, "injected", s.injected)
	if mode == modeCNI {
		s.stage(t, "restricted", s.restricted)
	}
	s.stage(t, "svid", s.svids)
	s.stage(t, "check", s.checkInstalled)
	if !s.stage(t, "chain", s.chain) {
		t.FailNow()
	}
	s.stage(t, "wire", s.wire)
	s.stage(t, "policy", s.policy)
	s.stage(t, "suggest", s.suggest)
	s.stage(t, "unlabelled", s.unlabelled)
	s.stage(t, "opt-out", s.optOut)
	s.stage(t, "check-escaped", s.checkEscaped)
	s.stage(t, "check-broken", s.checkBroken)
	s.stage(t, "job", s.job)
	s.stage(t, "rotation", s.rotation)
	s.stage(t, "injector-down", s.injectorDown)
	if mode == modeCNI {
		s.stage(t, "agent-restart", s.agentRestart)
		s.stage(t, "conflist-rewrite", s.conflistRewrite)
		s.stage(t, "agent-down", s.agentDown)
		s.stage(t, "agent-uninstalled", s.agentUninstalled)
	}
	s.stage(t, "uninstall", s.uninstall)
}

// stage runs one subtest and records how long it took.
func (s *storyRun) stage(t *testing.T, name string, f func(*testing.T)) bool {
	t.Helper()
	start := time.Now()
	ok := t.Run(name, f)
	d := time.Since(start).Round(100 * time.Millisecond)
	result := "ok"
	if !ok {
		result = "FAILED"
	}
	t.Logf("stage %s: %s in %s", name, result, d)
	s.mu.Lock()
	s.stages = append(s.stages, fmt.Sprintf("%-14s %-6s %s", name, result, d))
	first := !ok && !s.dumped
	s.dumped = s.dumped || !ok
	s.mu.Unlock()
	if first {
		// The state as the first failure left it, before later stages change it.
		s.dump(t)
	}
	return ok
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// removeLeftovers deletes what an earlier, failed run left.
func (s *storyRun) removeLeftovers(t *testing.T) {
	s.n.must(t, 4*time.Minute, "delete", "namespace", story, plain, guideNamespace, "--ignore-not-found", "--timeout=3m")
	out := s.n.must(t, time.Minute, "get", "namespaces", "-o", "name")
	mwc := s.n.must(t, time.Minute, "get", "mutatingwebhookconfigurations", "-o", "name")
	if strings.Contains(out, "namespace/tether-system\n") || strings.Contains(mwc, "tether-injector") {
		t.Log("removing the Tether install an earlier run left")
		// --redirect-mode cni lists the node agent too, left by a CNI-mode run.
		s.sh(t, 5*time.Minute, "tether uninstall --crds --redirect-mode cni | kubectl delete --ignore-not-found --timeout=4m -f -")
	}
}

// sh runs a shell line as docs/install.md writes it (tether and kubectl
// on PATH, in the node's namespaces; node.shell), failing the test on error.
func (s *storyRun) sh(t *testing.T, timeout time.Duration, line string) string {
	t.Helper()
	out, err := s.n.shell(t, timeout, line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return out
}

// install installs Tether as docs/install.md says: the CRDs, then the
// control plane, each rendered by `tether install` from the chart, with
// tether-ca's SVIDs shortened to one minute (testdata/values.yaml) so the
// rotation stage takes minutes, not an hour:
//
//	tether install --crds | kubectl apply -f -
//	tether install -f test/cluster/testdata/values.yaml | kubectl apply --server-side -f -
func (s *storyRun) install(t *testing.T) {
	s.sh(t, 2*time.Minute, "tether install --crds | kubectl apply -f -")
	s.n.must(t, 2*time.Minute, "wait", "--for=condition=Established", "crd/accesspolicies.tether.dev", "--timeout=90s")
	s.sh(t, 3*time.Minute, "tether install -f "+filepath.Join(s.n.root, "test/cluster/testdata/values.yaml")+s.cniFlags(t)+" | kubectl apply --server-side -f -")
	for _, d := range []string{"tether-ca", "tether-discovery", "tether-injector"} {
		s.n.must(t, 6*time.Minute, "-n", "tether-system", "rollout", "status", "deploy/"+d, "--timeout=5m")
	}
	if s.mode == modeCNI {
		s.n.must(t, 6*time.Minute, "-n", "kube-system", "rollout", "status", "daemonset/tether-cni-node", "--timeout=5m")
		s.nodeAgentInstalled(t, true)
	}
	// The image defaults to the CLI's version (make image tags it so).
	want := "tether:" + version.Version
	images := s.n.must(t, time.Minute, "-n", "tether-system", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[*].image}")
	for _, img := range strings.Fields(images) {
		if img != want {
			t.Errorf("a control-plane pod runs image %q, want %s", img, want)
		}
	}
}

// deploy labels the story namespace, then deploys the apps there and in
// the plain namespace, the Job and the opted-out pod.
func (s *storyRun) deploy(t *testing.T) {
	s.n.must(t, time.Minute, "create", "namespace", story)
	s.n.must(t, time.Minute, "label", "namespace", story, inject.InjectLabel+"=enabled")
	if s.mode == modeCNI {
		s.n.must(t, time.Minute, "label", "namespace", story, enforceLabel+"=restricted")
	}
	s.n.must(t, time.Minute, "create", "namespace", plain)
	for _, ns := range []string{story, plain} {
		s.n.mustIn(t, time.Minute, template(t, "apps.yaml", "__NAMESPACE__", ns, "__MARKER__", s.marker), "apply", "-f", "-")
	}
	s.n.mustIn(t, time.Minute, template(t, "job.yaml"), "apply", "-f", "-")
	s.n.mustIn(t, time.Minute, template(t, "optout.yaml"), "apply", "-f", "-")
	for _, ns := range []string{story, plain} {
		for _, a := range apps {
			s.n.must(t, 6*time.Minute, "-n", ns, "rollout", "status", "deploy/"+a, "--timeout=5m")
		}
	}
}

// injected: every story pod has tether-init and the native sidecar, the
// Workload API variable, rewritten probes, and is Ready.
func (s *storyRun) injected(t *testing.T) {
	for _, a := range apps {
		p := s.n.pod(t, story, "app="+a)
		if err := checkInjected(p, s.mode); err != nil {
			t.Errorf("pod %s: %v", p.Name, err)
		}
	}
}

func checkInjected(p corev1.Pod, mode string) error {
	var names []string
	for _, c := range p.Spec.InitContainers {
		names = append(names, c.Name)
	}
	want, first := []string{inject.InitContainerName, inject.SidecarContainerName}, inject.InitContainerName
	if mode == modeCNI {
		want, first = []string{inject.ValidateContainerName, inject.SidecarContainerName}, inject.ValidateContainerName
		if got := p.Annotations[inject.AnnotationRedirect]; got != inject.RedirectCNI {
			return fmt.Errorf("annotation %s=%q, want %q", inject.AnnotationRedirect, got, inject.RedirectCNI)
		}
	}
	if !slices.Equal(names, want) {
		return fmt.Errorf("init containers %v, want %v", names, want)
	}
	if rp := p.Spec.InitContainers[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
		return fmt.Errorf("%s is not a native sidecar (restartPolicy %v, want Always)", inject.SidecarContainerName, rp)
	}
	if len(p.Spec.Containers) != 1 {
		return fmt.Errorf("%d app containers, want 1", len(p.Spec.Containers))
	}
	app := p.Spec.Containers[0]
	env := ""
	for _, e := range app.Env {
		if e.Name == inject.SocketEnv {
			env = e.Value
		}
	}
	if env != "unix://"+inject.SocketPath {
		return fmt.Errorf("app container: %s=%q, want unix://%s", inject.SocketEnv, env, inject.SocketPath)
	}
	for kind, pr := range map[string]*corev1.Probe{"readyz": app.ReadinessProbe, "livez": app.LivenessProbe} {
		want := inject.AppProbePath(app.Name, kind)
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != want || pr.HTTPGet.Port.IntValue() != inject.AdminPort {
			return fmt.Errorf("app container's %s probe %+v, want GET :%d%s", kind, pr, inject.AdminPort, want)
		}
	}
	if p.Annotations[inject.AnnotationOriginalProbes] == "" {
		return fmt.Errorf("no annotation %s", inject.AnnotationOriginalProbes)
	}
	if !podReady(p) {
		return fmt.Errorf("not Ready: %+v", p.Status.Conditions)
	}
	for _, cs := range p.Status.InitContainerStatuses {
		switch cs.Name {
		case first:
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
				return fmt.Errorf("%s did not end with exit code 0: %+v", cs.Name, cs.State)
			}
		case inject.SidecarContainerName:
			if !cs.Ready || cs.State.Running == nil {
				return fmt.Errorf("%s is not running and ready: %+v", cs.Name, cs.State)
			}
		}
	}
	return nil
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// identity is the part of `tether identity --json` the test reads.
type identity struct {
	SPIFFEID string `json:"spiffe_id"`
	Bundles  []struct {
		Roots []struct {
			SHA256 string `json:"sha256"`
		} `json:"roots"`
	} `json:"bundles"`
}

// sidecarIdentity runs `tether identity --json` in an app's sidecar.
func (s *storyRun) sidecarIdentity(t *testing.T, app string) (identity, error) {
	t.Helper()
	out, err := s.n.kubectl(time.Minute, "-n", story, "exec", "deploy/"+app, "-c", inject.SidecarContainerName, "--", "tether", "identity", "-o", "json")
	if err != nil {
		return identity{}, err
	}
	var id identity
	if err := json.Unmarshal([]byte(out), &id); err != nil {
		return identity{}, fmt.Errorf("tether identity --json in %s: %v\n%s", app, err, out)
	}
	return id, nil
}

// svids: each app reads its SVID with go-spiffe's stock client, and the
// sidecar shows the same with `tether identity`.
func (s *storyRun) svids(t *testing.T) {
	for _, a := range apps {
		want := "spiffe://cluster.local/ns/story/sa/" + a
		out, err := s.n.kubectl(time.Minute, "-n", story, "exec", "deploy/"+a, "-c", "app", "--", "tether-sample", "svid")
		if err != nil {
			t.Errorf("%s: %v", a, err)
		} else if !strings.Contains(out, "spiffe_id: "+want+"\n") {
			t.Errorf("%s: tether-sample svid printed %q, want spiffe_id %s", a, out, want)
		} else {
			t.Logf("%s (go-spiffe in the app container): %s", a, strings.ReplaceAll(strings.TrimSpace(out), "\n", ", "))
		}
		id, err := s.sidecarIdentity(t, a)
		if err != nil {
			t.Errorf("%s: %v", a, err)
		} else if id.SPIFFEID != want {
			t.Errorf("%s: tether identity says %q, want %s", a, id.SPIFFEID, want)
		}
	}
}

// get runs GET http://127.0.0.1:8080/ in web's app container: the start of
// the chain web -> api -> db.
func (s *storyRun) get(ns string) (string, error) {
	return s.n.kubectl(time.Minute, "-n", ns, "exec", "deploy/web", "-c", "app", "--", "tether-sample", "get", "http://127.0.0.1:8080/")
}

func (s *storyRun) chainAnswer() string {
	return fmt.Sprintf("web: marker=%s request-marker=-\n  api: marker=%[1]s request-marker=%[1]s\n    db: marker=%[1]s request-marker=%[1]s\n", s.marker)
}

// accessEntry is one line of a sidecar's access log.
type accessEntry struct {
	Msg           string `json:"msg"`
	Direction     string `json:"direction"`
	SourceID      string `json:"source_id"`
	DestinationID string `json:"destination_id"`
	Source        string `json:"source"`
	Destination   string `json:"destination"`
	Decision      string `json:"decision"`
	Rule          string `json:"rule"`
}

// accessLog returns the access log lines of an app's sidecar.
func (s *storyRun) accessLog(app string) ([]accessEntry, error) {
	out, err := s.n.kubectl(time.Minute, "-n", story, "logs", "deploy/"+app, "-c", inject.SidecarContainerName, "--tail=-1")
	if err != nil {
		return nil, err
	}
	var entries []accessEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e accessEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "connection" {
			entries = append(entries, e)
		}
	}
	return entries, nil
}

// findAccess waits until app's sidecar logged a connection matching.
func (s *storyRun) findAccess(t *testing.T, app, what string, match func(accessEntry) bool) {
	t.Helper()
	eventually(t, app+"'s sidecar logs "+what, 30*time.Second, 2*time.Second, func() error {
		entries, err := s.accessLog(app)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if match(e) {
				return nil
			}
		}
		return fmt.Errorf("none of its %d access log lines matches", len(entries))
	})
}

// chain: web -> api -> db by Service names, in the mesh and without it; the
// destination sidecars' access logs name the callers.
func (s *storyRun) chain(t *testing.T) {
	for _, ns := range []string{story, plain} {
		out, err := s.get(ns)
		if err != nil {
			t.Fatalf("%s: %v", ns, err)
		}
		if out != s.chainAnswer() {
			t.Fatalf("%s: web answered\n%s\nwant\n%s", ns, out, s.chainAnswer())
		}
	}
	id := func(sa string) string { return "spiffe://cluster.local/ns/story/sa/" + sa }
	for _, hop := range [][2]string{{"web", "api"}, {"api", "db"}} {
		from, to := hop[0], hop[1]
		s.findAccess(t, to, "an inbound connection from "+id(from), func(e accessEntry) bool {
			return e.Direction == "inbound" && e.Decision == "allow" && e.SourceID == id(from) && e.DestinationID == id(to)
		})
	}
}

// podIP returns the IP of an app's one pod in ns.
func (s *storyRun) podIP(t *testing.T, ns, app string) netip.Addr {
	t.Helper()
	p := s.n.pod(t, ns, "app="+app)
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		t.Fatalf("pod %s/%s: IP %q: %v", ns, p.Name, p.Status.PodIP, err)
	}
	return ip
}

// capture runs tcpdump on every interface of the node (the pods' veths and
// the bridge) while calls are made, and returns the pod traffic seen.
func (s *storyRun) capture(t *testing.T, calls func()) ([]byte, []packet) {
	t.Helper()
	c := s.n.start(t, 3*time.Minute, "exec.sh", "timeout", "-s", "INT", "120", "tcpdump", "-i", "any", "-U", "-s0", "-w", "-", "tcp and net 10.88.0.0/16")
	eventually(t, "tcpdump listening", 30*time.Second, 200*time.Millisecond, func() error {
		select {
		case <-c.done:
			return fmt.Errorf("tcpdump ended: %v", c.err)
		default:
		}
		if !strings.Contains(c.stderr.String(), "listening on") {
			return errors.New("not yet")
		}
		return nil
	})
	calls()
	time.Sleep(time.Second)
	c.interrupt()
	if err := c.wait(30 * time.Second); err != nil {
		t.Logf("tcpdump: %v", err)
	}
	raw := c.stdout.Bytes()
	pkts, err := parsePcap(raw)
	if err != nil {
		t.Fatalf("reading tcpdump's capture (%d bytes; stderr %q): %v", len(raw), c.stderr.String(), err)
	}
	t.Logf("captured %d bytes, %d TCP segments (tcpdump: %s)", len(raw), len(pkts), strings.TrimSpace(c.stderr.String()))
	return raw, pkts
}

// wire: the marker, in every request and answer of the chain, never crosses
// the pods' interfaces in the mesh, where the hops are TLS; the same capture
// does see it between the plain namespace's apps.
func (s *storyRun) wire(t *testing.T) {
	for _, ns := range []string{story, plain} {
		web, api, db := s.podIP(t, ns, "web"), s.podIP(t, ns, "api"), s.podIP(t, ns, "db")
		raw, pkts := s.capture(t, func() {
			for range 3 {
				if out, err := s.get(ns); err != nil || out != s.chainAnswer() {
					t.Errorf("%s: the chain during the capture: %q, %v", ns, out, err)
				}
			}
		})
		webAPI, apiDB := between(pkts, web, api), between(pkts, api, db)
		if len(webAPI) == 0 || len(apiDB) == 0 {
			t.Fatalf("%s: the capture holds %d segments with data between web and api and %d between api and db: it saw no hop, so it proves nothing", ns, len(webAPI), len(apiDB))
		}
		seen := bytes.Contains(raw, []byte(s.marker))
		switch ns {
		case story:
			if seen {
				t.Errorf("the marker %s crossed the wire in plaintext between the meshed pods", s.marker)
			}
			if tlsRecords(webAPI) == 0 || tlsRecords(apiDB) == 0 {
				t.Errorf("no TLS records between the meshed pods: web-api %d of %d segments, api-db %d of %d",
					tlsRecords(webAPI), len(webAPI), tlsRecords(apiDB), len(apiDB))
			}
			t.Logf("mesh: marker absent; TLS records: web-api %d of %d segments, api-db %d of %d", tlsRecords(webAPI), len(webAPI), tlsRecords(apiDB), len(apiDB))
		case plain:
			if !seen {
				t.Errorf("the capture of the plain namespace does not hold the marker: it cannot tell TLS from plaintext")
			}
			t.Logf("plain: marker seen in plaintext (%d and %d segments with data on the two hops)", len(webAPI), len(apiDB))
		}
	}
}

// fromWeb runs tether-sample in web's app container of the story namespace
// and returns its output and exit code.
func (s *storyRun) fromWeb(args ...string) (string, int, error) {
	return s.fromApp("web", args...)
}

// policy: an AccessPolicy that lets only api reach db: web gets NXDOMAIN for
// db and its connections to db's ClusterIP and pod IP are refused, while
// api still reaches db; deleting the policy lets web in again.
func (s *storyRun) policy(t *testing.T) {
	const fqdn = "db.story.svc.cluster.local."
	clusterIP := strings.TrimSpace(s.n.must(t, time.Minute, "-n", story, "get", "service", "db", "-o", "jsonpath={.spec.clusterIP}"))
	podAddr := netip.AddrPortFrom(s.podIP(t, story, "db"), 8080).String()
	svcAddr := clusterIP + ":8080"

	reachable := func() error {
		out, code, err := s.fromWeb("lookup", fqdn)
		if code != 0 || !strings.Contains(out, clusterIP) {
			return fmt.Errorf("lookup %s: want %s: %q (exit %d, %v)", fqdn, clusterIP, out, code, err)
		}
		for _, addr := range []string{svcAddr, podAddr} {
			if _, _, err := s.fromWeb("dial", addr); err != nil {
				return err
			}
		}
		return nil
	}
	eventually(t, "web reaches db before the policy", 30*time.Second, 2*time.Second, reachable)

	s.n.mustIn(t, time.Minute, template(t, "deny-web-to-db.yaml"), "apply", "-f", "-")
	applied := time.Now()
	t.Cleanup(func() {
		s.n.kubectl(time.Minute, "-n", story, "delete", "accesspolicy", "db-from-api-only", "--ignore-not-found")
	})
	// The address query: the sidecar answers NXDOMAIN for it; and a query
	// that finds no address (AAAA of this IPv4-only Service, which kube-dns
	// answers NODATA for a name that exists) is NXDOMAIN too, so that it
	// does not tell web that db exists.
	for _, qtype := range []string{"A", "AAAA"} {
		eventually(t, "web gets NXDOMAIN for "+qtype+" "+fqdn, time.Minute, time.Second, func() error {
			out, code, err := s.fromWeb("lookup", "--type", qtype, fqdn)
			if code != 3 || strings.TrimSpace(out) != "NXDOMAIN" {
				return fmt.Errorf("want NXDOMAIN (exit 3): %q (exit %d, %v)", out, code, err)
			}
			return nil
		})
	}
	t.Logf("NXDOMAIN %s after the policy was applied", time.Since(applied).Round(100*time.Millisecond))
	// db's ClusterIP: web's own sidecar resets the connection at once.
	eventually(t, "web's connection to db's ClusterIP "+svcAddr+" refused at once", 30*time.Second, time.Second, func() error {
		out, code, err := s.fromWeb("dial", svcAddr)
		if code != 1 {
			return fmt.Errorf("dial %s: want exit 1 (reset at once), got exit %d: %q %v", svcAddr, code, out, err)
		}
		t.Logf("dial %s from web: %v", svcAddr, lastLine(err))
		return nil
	})
	s.findAccess(t, "web", "the denial of db's ClusterIP", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "deny" && e.SourceID == "spiffe://cluster.local/ns/story/sa/web" && e.Destination == svcAddr
	})
	// db's pod IP: discovery does not send a hidden service's endpoints,
	// so web's sidecar passes the connection through like any address
	// outside the mesh; db's sidecar (strict) refuses what is not mTLS.
	webIP := s.podIP(t, story, "web")
	podURL := "http://" + podAddr + "/"
	eventually(t, "web's request to db's pod IP "+podAddr+" refused", 30*time.Second, time.Second, func() error {
		out, code, err := s.fromWeb("get", "--timeout", "5s", podURL)
		if code != 1 {
			return fmt.Errorf("get %s: want exit 1 (refused), got exit %d: %q %v", podURL, code, out, err)
		}
		t.Logf("get %s from web: %v", podURL, lastLine(err))
		return nil
	})
	s.findAccess(t, "db", "the refusal of web's plaintext from "+webIP.String(), func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "deny" && strings.HasPrefix(e.Source, webIP.String()+":")
	})
	if out, err := s.get(story); err != nil || out != s.chainAnswer() {
		t.Errorf("api no longer reaches db under a policy that allows it: %q, %v", out, err)
	}

	s.n.must(t, time.Minute, "-n", story, "delete", "accesspolicy", "db-from-api-only")
	eventually(t, "web reaches db again after the policy is deleted", time.Minute, 2*time.Second, reachable)
}

// lastLine is the last non-empty line of an error's text.
func lastLine(err error) string {
	var ce *cmdError
	if errors.As(err, &ce) {
		lines := strings.Split(strings.TrimSpace(ce.stderr), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], "tether-sample") {
				return lines[i]
			}
		}
		return lines[len(lines)-1]
	}
	return fmt.Sprint(err)
}

// hasTether says whether a pod got any of Tether's containers or its
// Workload API variable.
func hasTether(p corev1.Pod) error {
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		if strings.HasPrefix(c.Name, "tether-") {
			return fmt.Errorf("has container %s", c.Name)
		}
		for _, e := range c.Env {
			if e.Name == inject.SocketEnv {
				return fmt.Errorf("container %s has %s", c.Name, e.Name)
			}
		}
	}
	return nil
}

// unlabelled: the plain namespace's pods have no sidecar, and no Workload API.
func (s *storyRun) unlabelled(t *testing.T) {
	for _, a := range apps {
		p := s.n.pod(t, plain, "app="+a)
		if err := hasTether(p); err != nil {
			t.Errorf("pod %s/%s in a namespace without the label: %v", plain, p.Name, err)
		}
	}
	_, err := s.n.kubectl(time.Minute, "-n", plain, "exec", "deploy/web", "-c", "app", "--", "tether-sample", "svid")
	if err == nil || !strings.Contains(err.Error(), "SPIFFE_ENDPOINT_SOCKET is not set") {
		t.Errorf("tether-sample svid in the plain namespace: want SPIFFE_ENDPOINT_SOCKET is not set, got %v", err)
	}
}

// optOut: a pod labelled tether.dev/inject=disabled in the meshed
// namespace runs without the sidecar.
func (s *storyRun) optOut(t *testing.T) {
	s.n.must(t, 3*time.Minute, "-n", story, "wait", "--for=condition=Ready", "pod/optout", "--timeout=2m")
	var p corev1.Pod
	s.n.getJSON(t, &p, "-n", story, "get", "pod", "optout", "-o", "json")
	if err := hasTether(p); err != nil {
		t.Errorf("opted-out pod: %v", err)
	}
}

// job: a Job of the meshed namespace gets the native sidecar and completes.
func (s *storyRun) job(t *testing.T) {
	s.n.must(t, 4*time.Minute, "-n", story, "wait", "--for=condition=complete", "job/once", "--timeout=3m")
	p := s.n.pod(t, story, "job-name=once")
	var names []string
	for _, c := range p.Spec.InitContainers {
		names = append(names, c.Name)
	}
	if !slices.Contains(names, inject.SidecarContainerName) {
		t.Errorf("the Job's pod has init containers %v: no %s", names, inject.SidecarContainerName)
	}
	if p.Status.Phase != corev1.PodSucceeded {
		t.Errorf("the Job's pod is %s, want Succeeded", p.Status.Phase)
	}
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name == inject.SidecarContainerName && cs.State.Terminated == nil {
			t.Errorf("the Job's sidecar did not exit: %+v", cs.State)
		}
	}
}

// generation is one row of `tether ca status`.
type generation struct {
	id, state, root string
	retireAfter     time.Time
}

var generationRow = regexp.MustCompile(`(?m)^(\d+)\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+(\S+)\s*$`)

// caStatus runs `tether ca status` in a tether-ca pod.
func (s *storyRun) caStatus(t *testing.T) []generation {
	t.Helper()
	out := s.ca(t, "status")
	var gens []generation
	for _, m := range generationRow.FindAllStringSubmatch(out, -1) {
		g := generation{id: m[1], state: m[2], root: strings.TrimSuffix(m[3], "…")}
		if m[4] != "-" {
			at, err := time.Parse(time.RFC3339, m[4])
			if err != nil {
				t.Fatalf("tether ca status: RETIRE AFTER %q: %v", m[4], err)
			}
			g.retireAfter = at
		}
		gens = append(gens, g)
	}
	if len(gens) == 0 {
		t.Fatalf("tether ca status shows no generation:\n%s", out)
	}
	return gens
}

// ca runs `tether ca ARGS...` in a tether-ca pod, where the admin socket is.
func (s *storyRun) ca(t *testing.T, args ...string) string {
	t.Helper()
	return s.n.must(t, time.Minute, append([]string{"-n", "tether-system", "exec", "deploy/tether-ca", "-c", "ca", "--", "tether", "ca"}, args...)...)
}

func (s *storyRun) caTry(args ...string) (string, error) {
	return s.n.kubectl(time.Minute, append([]string{"-n", "tether-system", "exec", "deploy/tether-ca", "-c", "ca", "--", "tether", "ca"}, args...)...)
}

func byState(gens []generation, state string) *generation {
	for i := range gens {
		if gens[i].state == state {
			return &gens[i]
		}
	}
	return nil
}

// loadSummary is the first line load prints.
var loadSummary = regexp.MustCompile(`requests=(\d+) ok=(\d+) failed=(\d+)`)

// rotation: prepare -> activate -> retire with `tether ca rotate` while web
// calls the chain in a loop. db's sidecar is cut off from tether-ca (a DROP
// rule for port 8443 in db's network namespace) from just before prepare:
// activate refuses, naming db, and `tether ca rotate status` lists it; once
// the rule is gone, db gets the new root, activate passes, and the rotation
// completes. No call fails, no container restarts, and every sidecar ends
// trusting the new root alone.
func (s *storyRun) rotation(t *testing.T) {
	gens := s.caStatus(t)
	old := byState(gens, "active")
	if old == nil || len(gens) != 1 {
		t.Fatalf("want one active generation before the rotation, got %+v", gens)
	}
	eventually(t, "web, api and db to report to tether-ca", time.Minute, 3*time.Second, func() error {
		st, err := s.rotateStatus()
		if err != nil || len(st.Generations) != 1 || st.Generations[0].Trusting < int64(len(apps)) {
			return fmt.Errorf("%+v %v", st, err)
		}
		return nil
	})
	const loadFor = 300 * time.Second
	loadStart := time.Now()
	load := s.n.start(t, loadFor+2*time.Minute, "kubectl.sh", "-n", story, "exec", "deploy/web", "-c", "app", "--",
		"tether-sample", "load", "--duration", loadFor.String(), "--interval", "100ms", "--timeout", "5s",
		"--expect", "db: marker="+s.marker, "http://127.0.0.1:8080/")
	time.Sleep(5 * time.Second)

	// db's sidecar keeps its SVID (1 minute) while cut off, and renews it
	// at half its life: the cut must end well within that.
	db := s.podIP(t, story, "db")
	s.cutCA(t, db, true)
	t.Cleanup(func() { s.cutCA(t, db, false) })
	cut := time.Now()
	t.Logf("prepare:\n%s", s.ca(t, "rotate", "prepare"))
	prepared := time.Now()
	time.Sleep(11 * time.Second) // past the 10s propagation delay
	dbID := "spiffe://cluster.local/ns/" + story + "/sa/db"
	out, err := s.caTry("rotate", "activate")
	if err == nil {
		t.Fatalf("activate passed while db's sidecar cannot have the new root:\n%s", out)
	}
	if !strings.Contains(err.Error(), dbID) || !strings.Contains(err.Error(), "--force") {
		t.Errorf("activate's refusal does not name %s and --force:\n%v", dbID, err)
	}
	t.Logf("activate while db is cut off from tether-ca:\n%v", err)
	t.Logf("tether ca rotate status while db is cut off:\n%s", s.ca(t, "rotate", "status"))
	st, err := s.rotateStatus()
	if err != nil || len(st.Activate.Laggards) != 1 || st.Activate.Laggards[0].SpiffeID != dbID {
		t.Errorf("rotate status -o json: activate laggards %+v (%v), want db alone", st.Activate.Laggards, err)
	}
	s.cutCA(t, db, false)
	t.Logf("db cut off from tether-ca for %s", time.Since(cut).Round(time.Second))

	eventually(t, "activate once db has the new root", 2*time.Minute, 3*time.Second, func() error {
		var err error
		out, err = s.caTry("rotate", "activate")
		return err
	})
	t.Logf("activate %s after prepare:\n%s", time.Since(prepared).Round(time.Second), out)
	superseded := byState(s.caStatus(t), "superseded")
	if superseded == nil || superseded.retireAfter.IsZero() {
		t.Fatalf("after activate no superseded generation with a retire time: %+v", s.caStatus(t))
	}
	wait := time.Until(superseded.retireAfter) + 2*time.Second // status shows whole seconds
	t.Logf("waiting %s until the superseded generation may retire (%s)", wait.Round(time.Second), superseded.retireAfter.Format(time.RFC3339))
	time.Sleep(wait)
	eventually(t, "retire", time.Minute, 3*time.Second, func() error {
		var err error
		out, err = s.caTry("rotate", "retire")
		return err
	})
	retired := time.Now()
	t.Logf("retire %s after prepare:\n%s", retired.Sub(prepared).Round(time.Second), out)
	gens = s.caStatus(t)
	active := byState(gens, "active")
	if active == nil || active.root == old.root || byState(gens, "superseded") != nil || byState(gens, "prepared") != nil {
		t.Fatalf("after the rotation, want one active generation with a new root and nothing superseded or prepared: %+v", gens)
	}
	for _, a := range apps {
		eventually(t, a+"'s sidecar trusts the new root alone", time.Minute, 3*time.Second, func() error {
			id, err := s.sidecarIdentity(t, a)
			if err != nil {
				return err
			}
			// tether identity writes AB:CD:..., tether ca status abcd... (cut short).
			if len(id.Bundles) != 1 || len(id.Bundles[0].Roots) != 1 ||
				!strings.HasPrefix(strings.ToLower(strings.ReplaceAll(id.Bundles[0].Roots[0].SHA256, ":", "")), active.root) {
				return fmt.Errorf("bundles %+v, want the one root %s…", id.Bundles, active.root)
			}
			return nil
		})
	}
	if end := loadStart.Add(loadFor); end.Before(retired.Add(15 * time.Second)) {
		t.Errorf("the traffic loop ends at %s, less than 15s after the retire (%s): the rotation took longer than planned", end.Format(time.TimeOnly), retired.Format(time.TimeOnly))
	}
	err = load.wait(loadFor + time.Minute)
	summary := loadSummary.FindStringSubmatch(load.stdout.String())
	if summary == nil {
		t.Fatalf("the traffic loop printed no summary: %v\n%s", err, load.stdout.String())
	}
	t.Logf("traffic during the rotation: %s", strings.TrimSpace(load.stdout.String()))
	if summary[3] != "0" || err != nil {
		t.Errorf("calls failed during the rotation: %v", err)
	}
	s.noRestarts(t)
}

// rotateStatusJSON is the part of `tether ca rotate status -o json` the
// story reads.
type rotateStatusJSON struct {
	Generations []struct {
		Generation uint64 `json:"generation"`
		Trusting   int64  `json:"trusting"`
		Holding    int64  `json:"holding"`
	} `json:"generations"`
	Activate struct {
		Laggards []struct {
			SpiffeID string `json:"spiffe_id"`
			Instance string `json:"instance"`
		} `json:"laggards"`
	} `json:"activate"`
}

func (s *storyRun) rotateStatus() (rotateStatusJSON, error) {
	var st rotateStatusJSON
	out, err := s.caTry("rotate", "status", "-o", "json")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// cutCA adds (on) or removes a rule in the network namespace of the pod
// with address ip that drops its packets to port 8443 (tether-ca): its
// sidecar's connections to the CA hang, as behind a dead network. The
// namespace is found through the tether-sidecar process that has ip.
func (s *storyRun) cutCA(t *testing.T, ip netip.Addr, on bool) {
	t.Helper()
	op := "-D"
	if on {
		op = "-I"
	}
	script := `set -euo pipefail
for pid in $(pgrep -x tether-sidecar); do
  if nsenter -t "$pid" -n ip -o addr show | grep "inet $1/" >/dev/null; then # not grep -q: with pipefail, ip's SIGPIPE would fail the test
    if [ "$2" = -D ] && ! nsenter -t "$pid" -n iptables -w -C OUTPUT -p tcp --dport 8443 -m comment --comment tether-story-cut-ca -j DROP 2>/dev/null; then
      exit 0
    fi
    exec nsenter -t "$pid" -n iptables -w "$2" OUTPUT -p tcp --dport 8443 -m comment --comment tether-story-cut-ca -j DROP
  fi
done
echo "no tether-sidecar process in a network namespace with address $1" >&2
exit 1`
	if _, err := s.n.run(30*time.Second, "", "exec.sh", "bash", "-c", script, "cut-ca", ip.String(), op); err != nil {
		t.Fatalf("cutting the CA off (%s): %v", op, err)
	}
}

// noRestarts checks that no container of the story's apps restarted.
func (s *storyRun) noRestarts(t *testing.T) {
	t.Helper()
	for _, a := range apps {
		p := s.n.pod(t, story, "app="+a)
		for _, cs := range slices.Concat(p.Status.InitContainerStatuses, p.Status.ContainerStatuses) {
			if cs.RestartCount != 0 {
				t.Errorf("pod %s: container %s restarted %d times", p.Name, cs.Name, cs.RestartCount)
			}
		}
	}
}

// injectorDown: with no injector, creating a pod in the meshed namespace
// fails (failurePolicy Fail) saying why, and a ReplicaSet records it as an
// event; once the injector is back, both work.
func (s *storyRun) injectorDown(t *testing.T) {
	s.n.must(t, time.Minute, "-n", "tether-system", "scale", "deploy/tether-injector", "--replicas=0")
	t.Cleanup(func() {
		s.n.kubectl(time.Minute, "-n", "tether-system", "scale", "deploy/tether-injector", "--replicas=2")
	})
	s.n.must(t, 3*time.Minute, "-n", "tether-system", "wait", "--for=delete", "pod", "-l", "app.kubernetes.io/name=tether-injector", "--timeout=2m")
	bare := runArgs("bare", "sleep", "1h")
	_, err := s.n.kubectl(time.Minute, bare...)
	if err == nil {
		t.Fatalf("a pod was created in the meshed namespace while no injector runs")
	}
	if !strings.Contains(err.Error(), `failed calling webhook "inject.tether.dev"`) {
		t.Errorf("creating a pod with no injector failed, but not naming the webhook: %v", err)
	}
	t.Logf("pod creation refused: %s", lastStderrLine(err))

	s.n.mustIn(t, time.Minute, template(t, "late.yaml"), "apply", "-f", "-")
	eventually(t, "a FailedCreate event of the late ReplicaSet naming the webhook", 2*time.Minute, 2*time.Second, func() error {
		var events corev1.EventList
		s.n.getJSON(t, &events, "-n", story, "get", "events", "--field-selector", "reason=FailedCreate", "-o", "json")
		for _, e := range events.Items {
			if strings.HasPrefix(e.InvolvedObject.Name, "late-") && strings.Contains(e.Message, `failed calling webhook "inject.tether.dev"`) {
				t.Logf("event %s %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message)
				return nil
			}
		}
		return fmt.Errorf("%d FailedCreate events, none for late naming the webhook", len(events.Items))
	})

	s.n.must(t, time.Minute, "-n", "tether-system", "scale", "deploy/tether-injector", "--replicas=2")
	s.n.must(t, 4*time.Minute, "-n", "tether-system", "rollout", "status", "deploy/tether-injector", "--timeout=3m")
	eventually(t, "creating a pod works again", time.Minute, 2*time.Second, func() error {
		_, err := s.n.kubectl(time.Minute, bare...)
		return err
	})
	s.n.must(t, 3*time.Minute, "-n", story, "wait", "--for=condition=Ready", "pod/bare", "--timeout=2m")
	s.n.must(t, 5*time.Minute, "-n", story, "rollout", "status", "deploy/late", "--timeout=4m")
	for _, sel := range []string{"run=bare", "app=late"} {
		if err := checkSidecar(s.n.pod(t, story, sel)); err != nil {
			t.Errorf("pod %s after the injector came back: %v", sel, err)
		}
	}
}

func checkSidecar(p corev1.Pod) error {
	for _, c := range p.Spec.InitContainers {
		if c.Name == inject.SidecarContainerName {
			return nil
		}
	}
	return fmt.Errorf("no %s", inject.SidecarContainerName)
}

func lastStderrLine(err error) string {
	var ce *cmdError
	if errors.As(err, &ce) {
		return strings.TrimSpace(ce.stderr)
	}
	return err.Error()
}

// uninstall: `tether uninstall | kubectl delete -f -` deletes the webhook
// configuration first and the namespace last and leaves no webhook behind,
// so pods of the once-meshed namespace are created again, without a
// sidecar; the CRD (and the AccessPolicies) stay until `tether uninstall
// --crds`.
func (s *storyRun) uninstall(t *testing.T) {
	s.sh(t, 6*time.Minute, "tether uninstall"+s.cniFlags(t)+" | kubectl delete --timeout=5m -f -")
	if out := s.n.must(t, time.Minute, "get", "mutatingwebhookconfigurations", "-o", "name"); strings.Contains(out, "tether") {
		t.Errorf("after uninstall: %s", out)
	}
	eventually(t, "namespace tether-system deleted", 2*time.Minute, time.Second, func() error {
		out, err := s.n.kubectl(time.Minute, "get", "namespace", "tether-system", "-o", "name", "--ignore-not-found")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("still there: %q, %v", out, err)
		}
		return nil
	})
	if out := s.n.must(t, time.Minute, "get", "crd", "-o", "name"); !strings.Contains(out, "accesspolicies.tether.dev") {
		t.Errorf("tether uninstall without --crds deleted the CRD: %s", out)
	}
	s.sh(t, 3*time.Minute, "tether uninstall --crds | kubectl delete --ignore-not-found --timeout=2m -f -")
	if out := s.n.must(t, time.Minute, "get", "crd", "-o", "name"); strings.Contains(out, "tether.dev") {
		t.Errorf("after uninstall --crds, CRDs left: %s", out)
	}
	if s.mode == modeCNI {
		// The node agent's exit (--uninstall-on-exit) took the chain entry
		// out: left behind, it would fail every new pod's network.
		s.nodeAgentInstalled(t, false)
	}
	s.n.must(t, time.Minute, runArgs("after", "sleep", "1h")...)
	var p corev1.Pod
	s.n.getJSON(t, &p, "-n", story, "get", "pod", "after", "-o", "json")
	if err := hasTether(p); err != nil {
		t.Errorf("a pod created after uninstall: %v", err)
	}
}

// dump logs what a failure needs: pods, events, control-plane and sidecar logs.
func (s *storyRun) dump(t *testing.T) {
	show := func(args ...string) {
		out, err := s.n.kubectl(time.Minute, args...)
		if err != nil {
			t.Logf("kubectl %s: %v", strings.Join(args, " "), err)
			return
		}
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), tail(out, 12000))
	}
	show("get", "pods", "-A", "-o", "wide")
	show("get", "events", "-A", "--sort-by=.lastTimestamp")
	for _, d := range []string{"tether-ca", "tether-discovery", "tether-injector"} {
		show("-n", "tether-system", "logs", "deploy/"+d, "--all-containers", "--tail=60")
	}
	for _, a := range apps {
		show("-n", story, "logs", "deploy/"+a, "-c", inject.SidecarContainerName, "--tail=40")
		show("-n", story, "logs", "deploy/"+a, "-c", "app", "--tail=20")
	}
}
