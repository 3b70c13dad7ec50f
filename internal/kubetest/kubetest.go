// Package kubetest runs a real Kubernetes API server for tests.
//
// Start launches a private etcd and kube-apiserver (built from upstream
// sources by hack/kube/build.sh, normally through `make kube-bins`) on free
// loopback ports, in the test's temporary directory, and stops them when the
// test ends. There is no controller-manager, scheduler or kubelet: objects
// are stored and validated, admission and authentication run for real, but
// nothing reconciles them (a Pod stays Pending forever). That is enough for
// ServiceAccount tokens: TokenRequest and TokenReview are served by the API
// server itself.
//
// The binaries are looked up in $TETHER_KUBE_BIN_DIR, or else in
// <repo root>/.cache/kube/bin. When they are missing, Start skips the test,
// unless CI=true or TETHER_REQUIRE_KUBE=1 is set, in which case it fails it.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/freeport"
	"github.com/tether-mesh/tether/internal/kubepki"
	"github.com/tether-mesh/tether/pkg/inject"
)

const (
	// BinDirEnv names the environment variable that points at the folder
	// holding the kube-apiserver and etcd binaries.
	BinDirEnv = "TETHER_KUBE_BIN_DIR"
	// RequireEnv names the environment variable that, set to 1 (or true),
	// turns missing binaries into a test failure instead of a skip. CI=true
	// does the same.
	RequireEnv = "TETHER_REQUIRE_KUBE"
	// BuildCommand is the command, run at the repository root, that builds
	// the binaries into the default folder.
	BuildCommand = "make kube-bins"
	// DefaultBinDir is the default binary folder, relative to the repository
	// root.
	DefaultBinDir = ".cache/kube/bin"

	// Issuer is the service-account token issuer (the "iss" claim) of every
	// Env. It is also the API server's default API audience.
	Issuer = "https://kubernetes.default.svc.cluster.local"

	// ServiceClusterIPRange is the Service IP range the API server allocates
	// from (no proxy implements it).
	ServiceClusterIPRange = "10.0.0.0/24"

	readyTimeout = 60 * time.Second
	etcdTimeout  = 30 * time.Second
	stopGrace    = 5 * time.Second
	logTailLines = 60
)

// Env is a running etcd and kube-apiserver pair, private to one test.
type Env struct {
	// Config is an admin (system:masters) client configuration. Copy it
	// (rest.CopyConfig) before changing it.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Dir is the temporary directory holding the data, certificates, keys
	// and the process logs (etcd.log, kube-apiserver.log).
	Dir string
	// Issuer is the service-account token issuer; see the Issuer constant.
	Issuer string
	// ServiceAccountSigningKey is the private key the API server signs
	// service-account tokens with (RSA, so tokens are RS256 as in most real
	// clusters). Tests can use its public half to verify tokens offline.
	ServiceAccountSigningKey *rsa.PrivateKey
	// ReadyAfter is how long Start took, from key generation to the API
	// server's first passing /readyz (the successful attempt only).
	ReadyAfter time.Duration

	ca      *kubepki.CA
	etcd    *process
	apiSrv  *process
	etcdURL string
}

// errPortClash marks a start-up failure caused by a port that another
// process took between the moment it was found free and its use.
var errPortClash = errors.New("port already in use")

// Start starts etcd and kube-apiserver for the test and returns once the API
// server's /readyz passes. Both processes are stopped (SIGTERM, then SIGKILL
// after a few seconds) when the test and its subtests have finished; if the
// test failed, the tails of their logs are written to the test log.
//
// When the binaries are missing, Start skips the test, with a message naming
// the command that builds them; with CI=true or TETHER_REQUIRE_KUBE=1 it
// fails it instead.
func Start(t testing.TB) *Env {
	t.Helper()
	binDir, err := findBinDir()
	if err != nil {
		missing(t, err.Error())
	}
	var absent []string
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if fi, err := os.Stat(filepath.Join(binDir, name)); err != nil || fi.IsDir() {
			absent = append(absent, name)
		}
	}
	if len(absent) > 0 {
		missing(t, fmt.Sprintf("%s not found in %s", strings.Join(absent, " and "), binDir))
	}

	var lastErr error
	for attempt := 1; attempt <= 2; attempt++ {
		env, err := start(t, binDir)
		if err == nil {
			return env
		}
		lastErr = err
		if !errors.Is(err, errPortClash) {
			break
		}
		first, _, _ := strings.Cut(err.Error(), "\n")
		t.Logf("kubetest: start-up attempt %d hit a port clash, retrying with new ports: %s", attempt, first)
	}
	t.Fatalf("kubetest: %v", lastErr)
	return nil
}

// missing skips or fails the test because the binaries cannot be found.
func missing(t testing.TB, why string) {
	t.Helper()
	msg := fmt.Sprintf("kubetest: %s; build them by running `%s` at the repository root "+
		"(it runs hack/kube/build.sh; the first build takes several minutes), "+
		"or point %s at a folder holding kube-apiserver and etcd", why, BuildCommand, BinDirEnv)
	if truthy(os.Getenv("CI")) || truthy(os.Getenv(RequireEnv)) {
		t.Fatal(msg + " (CI or " + RequireEnv + " is set, so this is a failure, not a skip)")
	}
	t.Skip(msg)
}

func truthy(s string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	return err == nil && b
}

// findBinDir returns $TETHER_KUBE_BIN_DIR, or <repo root>/.cache/kube/bin.
func findBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return filepath.Abs(d)
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, filepath.FromSlash(DefaultBinDir)), nil
}

// repoRoot walks up from the working directory (a test runs in its
// package's directory) to the directory whose go.mod declares the main
// module, or else to the nearest go.mod.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	nearest := ""
	for dir := wd; ; {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			if nearest == "" {
				nearest = dir
			}
			if modulePath(data) == "github.com/tether-mesh/tether" {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	if nearest == "" {
		return "", fmt.Errorf("cannot find the repository root: no go.mod above %s", wd)
	}
	return nearest, nil
}

func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// start makes one attempt at starting etcd and kube-apiserver.
func start(t testing.TB, binDir string) (*Env, error) {
	t0 := time.Now()
	dir := t.TempDir()
	env := &Env{Dir: dir, Issuer: Issuer}
	if err := env.writePKI(); err != nil {
		return nil, err
	}
	ports, err := freeport.Ports(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	env.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)

	env.etcd, err = startProcess(t, "etcd", filepath.Join(binDir, "etcd"), []string{
		"--name=kubetest",
		"--data-dir=" + filepath.Join(dir, "etcd-data"),
		"--listen-client-urls=" + env.etcdURL,
		"--advertise-client-urls=" + env.etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync=true",
		"--log-outputs=stderr",
	}, filepath.Join(dir, "etcd.log"))
	if err != nil {
		return nil, err
	}
	if err := waitEtcd(env.etcd, env.etcdURL); err != nil {
		env.etcd.stop()
		return nil, err
	}

	pki := func(name string) string { return filepath.Join(dir, "pki", name) }
	env.apiSrv, err = startProcess(t, "kube-apiserver", filepath.Join(binDir, "kube-apiserver"), []string{
		"--etcd-servers=" + env.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + pki("serving.crt"),
		"--tls-private-key-file=" + pki("serving.key"),
		"--client-ca-file=" + pki("ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		// A loopback advertise address cannot go into the "kubernetes"
		// Service's endpoints; the upstream test server turns this off too.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
	}, filepath.Join(dir, "kube-apiserver.log"))
	if err != nil {
		env.etcd.stop()
		return nil, err
	}

	adminCert, adminKey, err := env.ca.Client("kubetest-admin", "system:masters")
	if err != nil {
		env.stop()
		return nil, err
	}
	env.Config = &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   env.ca.CertPEM(),
			CertData: adminCert,
			KeyData:  adminKey,
		},
		// Tests create objects in bursts; client-side throttling only
		// slows them down.
		QPS:   1000,
		Burst: 2000,
	}
	if env.Client, err = kubernetes.NewForConfig(env.Config); err != nil {
		env.stop()
		return nil, err
	}
	if err := env.waitReady(); err != nil {
		env.stop()
		return nil, err
	}
	env.ReadyAfter = time.Since(t0)
	t.Logf("kubetest: kube-apiserver ready at %s after %v (logs in %s)", env.Config.Host, env.ReadyAfter.Round(time.Millisecond), dir)
	return env, nil
}

func (e *Env) stop() {
	if e.apiSrv != nil {
		e.apiSrv.stop()
	}
	if e.etcd != nil {
		e.etcd.stop()
	}
}

// waitEtcd waits for etcd's /health to report true.
func waitEtcd(p *process, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(etcdTimeout)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			return p.exitError("before becoming healthy")
		}
		resp, err := client.Get(url + "/health")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"true"`)) {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p.withLog(fmt.Errorf("etcd at %s not healthy after %v (last answer: %s)", url, etcdTimeout, last))
}

// waitReady polls the API server's /readyz until it passes.
func (e *Env) waitReady() error {
	hc, err := rest.HTTPClientFor(e.Config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		if e.apiSrv.exited() {
			return e.apiSrv.exitError("before becoming ready")
		}
		if e.etcd.exited() {
			return e.etcd.exitError("while kube-apiserver was starting")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.Config.Host+"/readyz?verbose", nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			last = fmt.Sprintf("HTTP %d:\n%s", resp.StatusCode, failingChecks(body))
		} else {
			last = err.Error()
		}
		cancel()
		time.Sleep(100 * time.Millisecond)
	}
	return e.apiSrv.withLog(fmt.Errorf("kube-apiserver at %s not ready after %v; last /readyz answer: %s",
		e.Config.Host, readyTimeout, last))
}

// failingChecks keeps the failing lines of a verbose /readyz answer.
func failingChecks(body []byte) string {
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "[-]") || strings.Contains(line, "failed") {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return string(bytes.TrimSpace(body))
	}
	return strings.Join(out, "\n")
}

// ----------------------------------------------------------------------------
// Processes

type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	done    chan struct{}
	waitErr error
	once    sync.Once

	mu       sync.Mutex
	reported bool // its log tail is already in a start-up error
}

// startProcess starts a binary with its output in logPath and registers a
// cleanup that stops it and, if the test failed, logs the tail of its log.
func startProcess(t testing.TB, name, path string, args []string, logPath string) (*process, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logFile, "# %s %s\n", path, strings.Join(args, " "))
	cmd := exec.Command(path, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = filepath.Dir(logPath)
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, logFile: logFile, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.mu.Lock()
		reported := p.reported
		p.mu.Unlock()
		if t.Failed() && !reported {
			t.Logf("kubetest: last lines of %s:\n%s", p.logPath, tail(p.logPath, logTailLines))
		}
		p.stop()
	})
	return p, nil
}

// dieWithParent asks Linux to SIGKILL the child if the test binary dies
// without running its cleanups (for example on a -timeout panic). The field
// only exists on Linux, hence the reflection; elsewhere it is a no-op.
func dieWithParent() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{}
	if f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig"); f.IsValid() && f.CanSet() &&
		f.Type() == reflect.TypeOf(syscall.SIGKILL) {
		f.Set(reflect.ValueOf(syscall.SIGKILL))
	}
	return attr
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an early exit, with the tail of the log; it wraps
// errPortClash when the log says a port was taken.
func (p *process) exitError(when string) error {
	return p.withLog(fmt.Errorf("%s exited %s: %v", p.name, when, p.waitErr))
}

// withLog appends the tail of the process log to err.
func (p *process) withLog(err error) error {
	p.mu.Lock()
	p.reported = true
	p.mu.Unlock()
	t := tail(p.logPath, logTailLines)
	if strings.Contains(t, "address already in use") {
		err = fmt.Errorf("%w (%w)", err, errPortClash)
	}
	return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, p.logPath, t)
}

// stop sends SIGTERM, waits a few seconds, then kills, and waits for exit.
func (p *process) stop() {
	p.once.Do(func() {
		if p.exited() {
			return
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			_ = p.cmd.Process.Kill()
		}
		select {
		case <-p.done:
		case <-time.After(stopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ----------------------------------------------------------------------------
// PKI

// writePKI writes, under Dir/pki: a CA (ca.crt), the API server's serving
// certificate for 127.0.0.1 and localhost (serving.crt, serving.key), and
// the service-account signing key (sa.key, sa.pub).
func (e *Env) writePKI() error {
	dir := filepath.Join(e.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := kubepki.NewCA("kubetest-ca", 10*24*time.Hour)
	if err != nil {
		return err
	}
	e.ca = ca
	servingCert, servingKey, err := ca.Serving("kube-apiserver",
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	saKey, saKeyPEM, saPubPEM, err := kubepki.ServiceAccountKey()
	if err != nil {
		return err
	}
	e.ServiceAccountSigningKey = saKey
	files := map[string][]byte{
		"ca.crt":      ca.CertPEM(),
		"serving.crt": servingCert,
		"serving.key": servingKey,
		"sa.key":      saKeyPEM,
		"sa.pub":      saPubPEM,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ----------------------------------------------------------------------------
// Objects and identities

// opContext bounds one API call made by a helper.
func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// EnsureNamespace creates the namespace unless it exists.
func (e *Env) EnsureNamespace(t testing.TB, name string) *corev1.Namespace {
	t.Helper()
	c, cancel := opContext()
	defer cancel()
	ns, err := e.Client.CoreV1().Namespaces().Create(c,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		ns, err = e.Client.CoreV1().Namespaces().Get(c, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("kubetest: namespace %s: %v", name, err)
	}
	return ns
}

// EnsureServiceAccount creates the namespace and the ServiceAccount unless
// they exist.
func (e *Env) EnsureServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	e.EnsureNamespace(t, ns)
	c, cancel := opContext()
	defer cancel()
	sa, err := e.Client.CoreV1().ServiceAccounts(ns).Create(c,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		sa, err = e.Client.CoreV1().ServiceAccounts(ns).Get(c, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("kubetest: service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// EnsurePod creates the namespace, the ServiceAccount and a Pod running as
// that ServiceAccount, with one container, unless they exist. No kubelet
// runs it: it stays Pending and unscheduled. An existing Pod with another
// ServiceAccount fails the test. The Pod is not in the mesh (it has no
// sidecar); see EnsureMeshPod.
func (e *Env) EnsurePod(t testing.TB, ns, sa, name string) *corev1.Pod {
	t.Helper()
	return e.ensurePod(t, ns, sa, name, false)
}

// EnsureMeshPod is EnsurePod for a Pod in the mesh: it also carries
// MeshSidecar, as the injector would have added it, which is how
// tether-discovery tells the Pods of the mesh from the others. An existing
// Pod without the sidecar fails the test.
func (e *Env) EnsureMeshPod(t testing.TB, ns, sa, name string) *corev1.Pod {
	t.Helper()
	return e.ensurePod(t, ns, sa, name, true)
}

// MeshSidecar is a stand-in for the container the injector adds to a Pod
// of the mesh: a native sidecar (an init container that restarts always)
// named inject.SidecarContainerName, whose image is never pulled.
func MeshSidecar() corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	return corev1.Container{
		Name:          inject.SidecarContainerName,
		Image:         "registry.invalid/kubetest/tether:never-pulled",
		RestartPolicy: &always,
	}
}

func (e *Env) ensurePod(t testing.TB, ns, sa, name string, meshed bool) *corev1.Pod {
	t.Helper()
	e.EnsureServiceAccount(t, ns, sa)
	c, cancel := opContext()
	defer cancel()
	pod, err := e.Client.CoreV1().Pods(ns).Get(c, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		spec := corev1.PodSpec{
			ServiceAccountName: sa,
			Containers: []corev1.Container{{
				Name:  "main",
				Image: "registry.invalid/kubetest/pause:never-pulled",
			}},
		}
		if meshed {
			spec.InitContainers = []corev1.Container{MeshSidecar()}
		}
		pod, err = e.Client.CoreV1().Pods(ns).Create(c, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
			Spec:       spec,
		}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("kubetest: pod %s/%s: %v", ns, name, err)
	}
	if pod.Spec.ServiceAccountName != sa {
		t.Fatalf("kubetest: pod %s/%s exists with service account %q, not %q", ns, name, pod.Spec.ServiceAccountName, sa)
	}
	if meshed && !inject.Injected(pod) {
		t.Fatalf("kubetest: pod %s/%s exists without the %s container", ns, name, inject.SidecarContainerName)
	}
	return pod
}

// PodToken creates, unless they exist, the namespace, the ServiceAccount and
// the Pod (see EnsurePod), then asks the API server (TokenRequest) for a
// token of that ServiceAccount bound to that Pod, for the given audience,
// valid for ttl. A TokenReview of the token reports the Pod in its extra
// fields (authentication.kubernetes.io/pod-name and pod-uid). The token
// stops being valid when the Pod is deleted, though for up to 10 s more the
// API server may answer from its cache of successful authentications.
//
// The API server refuses a ttl under 10 minutes; 0 asks for its default
// (1 hour). It may also return a token valid for longer than asked (it
// extends 3607 s tokens, the kubelet's default, to a year).
func (e *Env) PodToken(t testing.TB, ns, sa, pod, audience string, ttl time.Duration) string {
	t.Helper()
	p := e.EnsurePod(t, ns, sa, pod)
	return e.token(t, ns, sa, []string{audience}, ttl, &authenticationv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID,
	})
}

// ServiceAccountToken creates, unless they exist, the namespace and the
// ServiceAccount, and returns a token for it that is not bound to any
// object. With no audiences, the token is for the API server itself
// (audience Issuer). ttl is as for PodToken.
func (e *Env) ServiceAccountToken(t testing.TB, ns, sa string, ttl time.Duration, audiences ...string) string {
	t.Helper()
	e.EnsureServiceAccount(t, ns, sa)
	return e.token(t, ns, sa, audiences, ttl, nil)
}

func (e *Env) token(t testing.TB, ns, sa string, audiences []string, ttl time.Duration, bound *authenticationv1.BoundObjectReference) string {
	t.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:      audiences,
		BoundObjectRef: bound,
	}}
	if ttl > 0 {
		secs := int64(ttl / time.Second)
		req.Spec.ExpirationSeconds = &secs
	}
	c, cancel := opContext()
	defer cancel()
	resp, err := e.Client.CoreV1().ServiceAccounts(ns).CreateToken(c, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: token request for %s/%s (audiences %q, ttl %v): %v", ns, sa, audiences, ttl, err)
	}
	return resp.Status.Token
}

// ServiceAccountConfig returns a client configuration that authenticates as
// the ServiceAccount (system:serviceaccount:<ns>:<sa>) with a one-hour
// token, creating the namespace and ServiceAccount unless they exist. The
// API server authorizes it with RBAC: it can do nothing that no Role or
// ClusterRole binding grants it.
func (e *Env) ServiceAccountConfig(t testing.TB, ns, sa string) *rest.Config {
	t.Helper()
	token := e.ServiceAccountToken(t, ns, sa, time.Hour)
	return &rest.Config{
		Host:            e.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: e.ca.CertPEM()},
		BearerToken:     token,
		QPS:             e.Config.QPS,
		Burst:           e.Config.Burst,
	}
}

// UserConfig returns a client configuration that authenticates with a
// client certificate as the given user and groups (for example
// "system:masters", which bypasses RBAC).
func (e *Env) UserConfig(t testing.TB, user string, groups ...string) *rest.Config {
	t.Helper()
	certPEM, keyPEM, err := e.ca.Client(user, groups...)
	if err != nil {
		t.Fatalf("kubetest: client certificate for %s: %v", user, err)
	}
	return &rest.Config{
		Host:            e.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: e.ca.CertPEM(), CertData: certPEM, KeyData: keyPEM},
		QPS:             e.Config.QPS,
		Burst:           e.Config.Burst,
	}
}

// Kubeconfig writes a kubeconfig file for the admin client, for binaries
// under test that take --kubeconfig, and returns its path.
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	c := e.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("kubetest: write kubeconfig: %v", err)
	}
	return path
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRD creates the CustomResourceDefinition in the YAML file at path
// and waits until the API server reports it Established.
func (e *Env) InstallCRD(t testing.TB, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("kubetest: parse %s: %v", path, err)
	}
	dc, err := dynamic.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	crd, err := dc.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create CRD from %s: %v", path, err)
	}
	name := crd.GetName()
	for {
		crd, err := dc.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return
				}
				if m["type"] == "NamesAccepted" && m["status"] == "False" {
					t.Fatalf("kubetest: CRD %s names not accepted: %v", name, m["message"])
				}
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("kubetest: CRD %s not Established: %v (last error %v)", name, ctx.Err(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
