package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

func testConfig(t testing.TB) Config {
	t.Helper()
	c := DefaultConfig("registry.example/tether:test")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func loadPod(t testing.TB, path string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &pod
}

// apply applies patch to pod the way the API server does (RFC 6902).
func apply(t testing.TB, pod *corev1.Pod, patch Patch) *corev1.Pod {
	t.Helper()
	doc, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	pj, err := patch.JSON()
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(pj)
	if err != nil {
		t.Fatalf("decode patch: %v\n%s", err, pj)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch: %v\n%s", err, pj)
	}
	var res corev1.Pod
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatal(err)
	}
	return &res
}

// TestGolden checks the patch of each pod in testdata/pods against
// testdata/golden (go test -run TestGolden -update rewrites them), applies
// it, checks what every injected pod must have, and that injecting the
// result again changes nothing.
func TestGolden(t *testing.T) {
	cfg := testConfig(t)
	files, _ := filepath.Glob("testdata/pods/*.yaml")
	if len(files) == 0 {
		t.Fatal("no pods in testdata/pods")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			pod := loadPod(t, f)
			res, err := cfg.Mutate(pod, pod.Namespace)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(res.Patch, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("patch differs from %s (run go test -run TestGolden -update and review the diff):\n%s", golden, got)
			}
			injected := apply(t, pod, res.Patch)
			checkInjected(t, pod, injected)
			again, err := cfg.Mutate(injected, injected.Namespace)
			if err != nil || !again.Patch.Empty() || again.Skipped != "already injected (verified)" {
				t.Errorf("second injection: patch %v skipped %q err %v, want nothing", again.Patch, again.Skipped, err)
			}
		})
	}
}

// checkInjected asserts the Kubernetes contract on an injected pod.
func checkInjected(t *testing.T, orig, pod *corev1.Pod) {
	t.Helper()
	ic := pod.Spec.InitContainers
	if len(ic) != len(orig.Spec.InitContainers)+2 || ic[0].Name != InitContainerName || ic[1].Name != SidecarContainerName {
		t.Fatalf("init containers %v, want tether-init, tether-sidecar, then the pod's own", names(ic))
	}
	for i, c := range orig.Spec.InitContainers {
		if ic[i+2].Name != c.Name {
			t.Errorf("pod's init container %d is %s, want %s", i, ic[i+2].Name, c.Name)
		}
	}
	init, side := ic[0], ic[1]
	if init.RestartPolicy != nil {
		t.Error("tether-init must be a plain init container")
	}
	if side.RestartPolicy == nil || *side.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("tether-sidecar must be a native sidecar (restartPolicy Always)")
	}
	if init.Args[0] != "init" {
		t.Errorf("tether-init args %q, want the init subcommand", init.Args)
	}
	caps := init.SecurityContext.Capabilities
	if len(caps.Add) != 2 || caps.Add[0] != "NET_ADMIN" || caps.Add[1] != "NET_RAW" || len(caps.Drop) != 1 || caps.Drop[0] != "ALL" {
		t.Errorf("tether-init capabilities %+v, want NET_ADMIN and NET_RAW, drop ALL", caps)
	}
	sc := side.SecurityContext
	if *sc.RunAsUser != ProxyUID || *sc.RunAsGroup != ProxyUID || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem ||
		*sc.AllowPrivilegeEscalation || len(sc.Capabilities.Add) != 0 || sc.Capabilities.Drop[0] != "ALL" ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("sidecar security context %+v does not match the contract", sc)
	}
	if side.ReadinessProbe == nil || side.ReadinessProbe.HTTPGet.Port.IntVal != AdminPort || side.StartupProbe == nil {
		t.Error("sidecar needs readiness and startup probes on the admin port")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	if tok := vols[TokenVolume].Projected; tok == nil || tok.Sources[0].ServiceAccountToken.Audience != TokenAud ||
		*tok.Sources[0].ServiceAccountToken.ExpirationSeconds != 3600 {
		t.Errorf("token volume %+v, want a projected token for %s, 3600s", vols[TokenVolume], TokenAud)
	}
	if cm := vols[BundleVolume].ConfigMap; cm == nil || cm.Name != BundleConfig {
		t.Errorf("bundle volume %+v, want ConfigMap %s", vols[BundleVolume], BundleConfig)
	}
	if vols[SocketVolume].EmptyDir == nil {
		t.Error("no socket emptyDir")
	}
	for _, c := range pod.Spec.Containers {
		if !hasEnv(c.Env, SocketEnv) {
			t.Errorf("container %s has no %s", c.Name, SocketEnv)
		}
		if !hasMountPath(c.VolumeMounts, SocketDir) {
			t.Errorf("container %s does not mount %s", c.Name, SocketDir)
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p != nil && (p.TCPSocket != nil || p.GRPC != nil || (p.HTTPGet != nil && p.HTTPGet.Host == "" && p.HTTPGet.Port.IntVal != AdminPort)) {
				t.Errorf("container %s keeps a probe that does not go through the admin port: %+v", c.Name, p.ProbeHandler)
			}
		}
	}
}

// With discovery off the sidecar gets no --discovery and init does not
// redirect DNS (nothing would answer on :15053).
func TestMutateDiscoveryOff(t *testing.T) {
	cfg := testConfig(t)
	cfg.DiscoveryAddr = DiscoveryOff
	pod := apply(t, loadPod(t, "testdata/pods/annotated.yaml"), mustMutate(t, cfg, loadPod(t, "testdata/pods/annotated.yaml")))
	init, side := pod.Spec.InitContainers[0], pod.Spec.InitContainers[1]
	if slices.Contains(init.Args, "--capture-dns") || slices.Contains(side.Args, "--discovery") {
		t.Fatalf("discovery off: init %q sidecar %q", init.Args, side.Args)
	}
}

func TestConfigBadDiscoveryAddr(t *testing.T) {
	cfg := DefaultConfig("tether:test")
	cfg.DiscoveryAddr = "tether-discovery"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--discovery") {
		t.Fatalf("Validate = %v, want an error naming --discovery", err)
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestMutateArgsFromAnnotations(t *testing.T) {
	cfg := testConfig(t)
	pod := apply(t, loadPod(t, "testdata/pods/annotated.yaml"), mustMutate(t, cfg, loadPod(t, "testdata/pods/annotated.yaml")))
	init, side := pod.Spec.InitContainers[0], pod.Spec.InitContainers[1]
	wantInit := "init --capture-dns --outbound-mode registry-only --exclude-inbound-ports 9090,9091 --exclude-outbound-ports 5432 --exclude-outbound-cidrs 10.0.0.0/8,169.254.169.254/32"
	if got := strings.Join(init.Args, " "); got != wantInit {
		t.Errorf("init args\n got %s\nwant %s", got, wantInit)
	}
	args := strings.Join(side.Args, " ")
	for _, want := range []string{"--inbound-mode permissive", "--outbound-mode registry-only", "--token-file " + TokenPath, "--transparent",
		"--discovery tether-discovery.tether-system.svc:15010"} {
		if !strings.Contains(args, want) {
			t.Errorf("sidecar args %q lack %q", args, want)
		}
	}
	if cpu := side.Resources.Requests.Cpu().String(); cpu != "200m" {
		t.Errorf("cpu request %s, want 200m", cpu)
	}
	if m := side.Resources.Limits.Memory().String(); m != "256Mi" {
		t.Errorf("memory limit %s, want 256Mi", m)
	}
}

func mustMutate(t testing.TB, cfg Config, pod *corev1.Pod) Patch {
	t.Helper()
	res, err := cfg.Mutate(pod, pod.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	return res.Patch
}

func TestMutateSkips(t *testing.T) {
	cfg := testConfig(t)
	base := func() *corev1.Pod { return loadPod(t, "testdata/pods/minimal.yaml") }
	tests := []struct {
		name    string
		mod     func(*corev1.Pod)
		ns      string
		skipped string
		warn    bool
	}{
		{"opt-out label", func(p *corev1.Pod) { p.Labels = map[string]string{InjectLabel: "disabled"} }, "shop", "opted out", false},
		{"hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "shop", "hostNetwork", true},
		{"tether-system", func(p *corev1.Pod) {}, "tether-system", "never injected", false},
		{"kube-system", func(p *corev1.Pod) {}, "kube-system", "never injected", false},
		// Annotations are not even parsed on a pod that is skipped.
		{"opt-out with bad annotation", func(p *corev1.Pod) {
			p.Labels = map[string]string{InjectLabel: "disabled"}
			p.Annotations = map[string]string{AnnotationInboundMode: "bogus"}
		}, "shop", "opted out", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base()
			tt.mod(p)
			res, err := cfg.Mutate(p, tt.ns)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Patch.Empty() || !strings.Contains(res.Skipped, tt.skipped) {
				t.Errorf("patch %v skipped %q, want none and %q", res.Patch, res.Skipped, tt.skipped)
			}
			if tt.warn != (len(res.Warnings) > 0) {
				t.Errorf("warnings %q, want some: %v", res.Warnings, tt.warn)
			}
		})
	}
	// An enabled label is no opt-out.
	p := base()
	p.Labels = map[string]string{InjectLabel: "enabled"}
	if res, _ := cfg.Mutate(p, "shop"); res.Patch.Empty() {
		t.Error("pod labelled tether.dev/inject=enabled was not injected")
	}
}

func TestBadAnnotations(t *testing.T) {
	cfg := testConfig(t)
	tests := []struct{ key, value, want string }{
		{AnnotationExcludeInboundPorts, "http", "not a number"},
		{AnnotationExcludeInboundPorts, "0", ""},
		{AnnotationExcludeInboundPorts, "70000", ""},
		{AnnotationExcludeInboundPorts, "80,,81", "empty"},
		{AnnotationExcludeOutboundPorts, "-1", "not a number"},
		{AnnotationExcludeOutboundCIDRs, "10.0.0.0/33", "not a CIDR"},
		{AnnotationExcludeOutboundCIDRs, "example.com", "not an IP"},
		{AnnotationInboundMode, "STRICT", "want strict or permissive"},
		{AnnotationInboundMode, "", "want strict or permissive"},
		{AnnotationOutboundMode, "deny", "want passthrough or registry-only"},
		{AnnotationProxyCPU, "lots", "not a Kubernetes quantity"},
		{AnnotationProxyCPU, "0", "more than zero"},
		{AnnotationProxyMemory, "-1Gi", "more than zero"},
		{AnnotationProxyMemory, strings.Repeat("9", 200), "too large"},
		{AnnotationProxyMemory, "2Ti", "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+clip(tt.value), func(t *testing.T) {
			pod := loadPod(t, "testdata/pods/minimal.yaml")
			pod.Annotations = map[string]string{tt.key: tt.value}
			res, err := cfg.Mutate(pod, "shop")
			if !errors.Is(err, ErrInvalidAnnotation) {
				t.Fatalf("err %v (patch %v), want ErrInvalidAnnotation", err, res.Patch)
			}
			if !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q should name %s and say %q", err, tt.key, tt.want)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error too long (%d bytes): untrusted values must be clipped", len(err.Error()))
			}
		})
	}
}

func TestUnknownAnnotationWarns(t *testing.T) {
	cfg := testConfig(t)
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	pod.Annotations = map[string]string{"tether.dev/inbound-mod": "strict", "other.io/x": "y"}
	res, err := cfg.Mutate(pod, "shop")
	if err != nil || res.Patch.Empty() {
		t.Fatalf("err %v, patch empty %v", err, res.Patch.Empty())
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "tether.dev/inbound-mod") {
		t.Errorf("warnings %q, want one naming tether.dev/inbound-mod", res.Warnings)
	}
}

func TestProbeRewrite(t *testing.T) {
	cfg := testConfig(t)
	orig := loadPod(t, "testdata/pods/probes.yaml")
	pod := apply(t, orig, mustMutate(t, cfg, loadPod(t, "testdata/pods/probes.yaml")))
	web := pod.Spec.Containers[0]
	for _, c := range []struct {
		p    *corev1.Probe
		path string
	}{{web.LivenessProbe, "/app-health/web/livez"}, {web.ReadinessProbe, "/app-health/web/readyz"}, {web.StartupProbe, "/app-health/web/startupz"}} {
		if c.p.HTTPGet == nil || c.p.HTTPGet.Path != c.path || c.p.HTTPGet.Port.IntVal != AdminPort {
			t.Errorf("probe %+v, want GET %s on %d", c.p.ProbeHandler, c.path, AdminPort)
		}
	}
	if web.LivenessProbe.PeriodSeconds != 5 || web.LivenessProbe.TimeoutSeconds != 2 || web.StartupProbe.FailureThreshold != 30 {
		t.Error("probe timings were not kept")
	}
	worker := pod.Spec.Containers[1]
	if worker.LivenessProbe.Exec == nil || worker.ReadinessProbe.HTTPGet.Host != "10.1.2.3" {
		t.Error("exec probe and probe of another host must be left alone")
	}
	// The originals are kept in the annotation.
	var originals map[string]map[string]*corev1.Probe
	if err := json.Unmarshal([]byte(pod.Annotations[AnnotationOriginalProbes]), &originals); err != nil {
		t.Fatal(err)
	}
	if got := originals["web"]["livenessProbe"]; got == nil || got.HTTPGet.Port.StrVal != "http" || got.HTTPGet.Path != "/healthz" {
		t.Errorf("original liveness probe %+v", got)
	}
	if _, ok := originals["worker"]; ok {
		t.Error("worker's probes were not rewritten, yet kept as originals")
	}
	if pod.Annotations["team"] != "payments" {
		t.Error("existing annotation lost")
	}
	// The sidecar gets them with ports resolved.
	var env string
	for _, e := range pod.Spec.InitContainers[1].Env {
		if e.Name == AppProbesEnv {
			env = e.Value
		}
	}
	var app map[string]AppProbe
	if err := json.Unmarshal([]byte(env), &app); err != nil {
		t.Fatalf("%s=%q: %v", AppProbesEnv, env, err)
	}
	if h := app["/app-health/web/livez"].HTTPGet; h == nil || h.Port.IntVal != 8080 || h.HTTPHeaders[0].Value != "kubelet" {
		t.Errorf("liveness for sidecar %+v, want port 8080 resolved from the name, headers kept", h)
	}
	if tcp := app["/app-health/web/readyz"].TCPSocket; tcp == nil || tcp.Port.IntVal != 8080 {
		t.Errorf("readiness for sidecar %+v", tcp)
	}
	if g := app["/app-health/web/startupz"].GRPC; g == nil || g.Port != 9090 || *g.Service != "startup" {
		t.Errorf("startup for sidecar %+v", g)
	}
	if len(app) != 3 {
		t.Errorf("sidecar probes %v, want 3", app)
	}
}

func TestProbeUnknownNamedPort(t *testing.T) {
	cfg := testConfig(t)
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstrString("nope")}}}
	res, err := cfg.Mutate(pod, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `named port "nope"`) {
		t.Errorf("warnings %q, want one about the named port", res.Warnings)
	}
	out := apply(t, pod, res.Patch)
	if out.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.StrVal != "nope" {
		t.Error("probe with an unknown port should be left as it was")
	}
	if _, ok := out.Annotations[AnnotationOriginalProbes]; ok {
		t.Error("nothing rewritten, yet an originals annotation")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no image", func(c *Config) { c.Image = "" }, "--image"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "spiffe://x" }, "--trust-domain"},
		{"bad pull policy", func(c *Config) { c.ImagePullPolicy = "Sometimes" }, "--image-pull-policy"},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, "--sidecar-log-level"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig("img")
			tt.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want one naming %s", err, tt.want)
			}
		})
	}
	c := Config{Image: "img"}
	if err := c.Validate(); err != nil || c.CAAddr == "" || c.ProxyMemory.IsZero() {
		t.Errorf("defaults not filled: %v %+v", err, c)
	}
}

func intstrString(s string) intstr.IntOrString { return intstr.FromString(s) }

// TestRefusesProxyUIDAndGID: an app container that runs as the sidecar's
// UID or GID (1337) would skip the capture rules, which exempt the
// sidecar's traffic by owner: the pod is refused, with a message naming the
// container and the field, whether the ID is set on the container or
// inherited from the pod, in an app, init or ephemeral container.
func TestRefusesProxyUIDAndGID(t *testing.T) {
	cfg := testConfig(t)
	id, other := int64(ProxyUID), int64(1000)
	tests := []struct {
		name string
		mod  func(*corev1.Pod)
		want string
	}{
		{"container runAsUser", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: &id}
		}, `container "app" runs as UID 1337 (securityContext.runAsUser)`},
		{"container runAsGroup", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: &other, RunAsGroup: &id}
		}, `container "app" runs as GID 1337 (securityContext.runAsGroup)`},
		{"pod runAsUser", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &id}
		}, `container "app" runs as UID 1337 (the pod's securityContext.runAsUser)`},
		{"pod runAsGroup", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsGroup: &id}
		}, `container "app" runs as GID 1337 (the pod's securityContext.runAsGroup)`},
		{"app init container", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "migrate", SecurityContext: &corev1.SecurityContext{RunAsUser: &id}}}
		}, `init container "migrate" runs as UID 1337`},
		{"ephemeral container", func(p *corev1.Pod) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "debug", SecurityContext: &corev1.SecurityContext{RunAsGroup: &id}}}}
		}, `ephemeral container "debug" runs as GID 1337`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := loadPod(t, "testdata/pods/minimal.yaml")
			tt.mod(pod)
			res, err := cfg.Mutate(pod, "shop")
			if !errors.Is(err, ErrProxyIdentity) {
				t.Fatalf("err %v (patch of %d operations), want ErrProxyIdentity", err, len(res.Patch))
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "skip") {
				t.Errorf("error %q should say %q and why", err, tt.want)
			}
		})
	}
	// A container's own ID overrides the pod's: not refused.
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &id, RunAsGroup: &id}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: &other, RunAsGroup: &other}
	if _, err := cfg.Mutate(pod, "shop"); err != nil {
		t.Fatalf("pod whose only container overrides the pod's 1337 with 1000: %v", err)
	}
	// Through the webhook: the API server gets a refusal with the reason.
	w, _ := newWebhook(t, 0)
	bad := loadPod(t, "testdata/pods/minimal.yaml")
	bad.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: &id}
	out, _, err := w.Review(review(t, bad, "shop", nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"allowed":false`) || !strings.Contains(string(out), "runs as UID 1337") {
		t.Fatalf("webhook answer to a pod running as 1337: %.300s", out)
	}
}

// TestLocalhostInboundPorts: tether.dev/localhost-inbound-ports is
// normalized and passed to the sidecar; ports the sidecar itself listens on
// are refused (delivering a caller to 127.0.0.1:15001 would hand it the
// outbound listener, an open proxy with the pod's identity), as are ports
// whose inbound traffic is excluded from capture.
func TestLocalhostInboundPorts(t *testing.T) {
	cfg := testConfig(t)
	pod := loadPod(t, "testdata/pods/minimal.yaml")
	pod.Annotations = map[string]string{AnnotationLocalhostInboundPorts: " 9090,8081, 9090"}
	got := apply(t, pod, mustMutate(t, cfg, pod))
	if args := strings.Join(got.Spec.InitContainers[1].Args, " "); !strings.Contains(args, "--localhost-inbound-ports 9090,8081") {
		t.Fatalf("sidecar args %q lack --localhost-inbound-ports 9090,8081", args)
	}
	none := loadPod(t, "testdata/pods/minimal.yaml")
	if args := strings.Join(apply(t, none, mustMutate(t, cfg, none)).Spec.InitContainers[1].Args, " "); strings.Contains(args, "localhost") {
		t.Fatalf("sidecar args %q of a pod without the annotation mention localhost", args)
	}
	for _, tc := range []struct{ value, excluded, want string }{
		{"http", "", "not a number"},
		{"0", "", "out of range"},
		{"8080,15001", "", "15001 is the sidecar's outbound capture port"},
		{"15006", "", "15006 is the sidecar's inbound capture port"},
		{"15020", "", "15020 is the sidecar's admin port"},
		{"15053", "", "15053 is the sidecar's DNS port"},
		{"9090", "9090", "9090 is also in " + AnnotationExcludeInboundPorts},
	} {
		t.Run(tc.value, func(t *testing.T) {
			pod := loadPod(t, "testdata/pods/minimal.yaml")
			pod.Annotations = map[string]string{AnnotationLocalhostInboundPorts: tc.value}
			if tc.excluded != "" {
				pod.Annotations[AnnotationExcludeInboundPorts] = tc.excluded
			}
			res, err := cfg.Mutate(pod, "shop")
			if !errors.Is(err, ErrInvalidAnnotation) {
				t.Fatalf("err %v (patch of %d operations), want ErrInvalidAnnotation", err, len(res.Patch))
			}
			if !strings.Contains(err.Error(), AnnotationLocalhostInboundPorts) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q should name %s and say %q", err, AnnotationLocalhostInboundPorts, tc.want)
			}
		})
	}
}
