package cli_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/version"
)

// versionJSON is tether version -o json.
type versionJSON struct {
	Client struct{ Version, Revision string } `json:"client"`
	Server *struct {
		Where, Namespace string
		Components       []struct{ Component, Pod, Version, Revision, Error string }
	} `json:"server"`
	ServerError string `json:"server_error"`
}

func versionOf(t *testing.T, args ...string) (versionJSON, string, int) {
	t.Helper()
	out, errOut, code := run(t, append([]string{"version", "-o", "json"}, args...)...)
	var v versionJSON
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version -o json: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if v.Client.Version != version.Version {
		t.Errorf("client version %q, want %q", v.Client.Version, version.Version)
	}
	return v, errOut, code
}

// TestVersionClient: --client never asks a cluster.
func TestVersionClient(t *testing.T) {
	t.Setenv("KUBECONFIG", "/nonexistent/kubeconfig")
	v, _, code := versionOf(t, "--client")
	if code != 0 || v.Server != nil || v.ServerError != "" {
		t.Errorf("--client: exit %d, %+v", code, v)
	}
	out, errOut, code := run(t, "version", "--client")
	if code != 0 || out != "Client: "+version.Version+"\n" || errOut != "" {
		t.Errorf("--client: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// No cluster at all: the client's version, why there is no server's,
	// exit 0.
	out, _, code = run(t, "version", "--kubeconfig", "/nonexistent/kubeconfig")
	if code != 0 || !strings.HasPrefix(out, "Client: "+version.Version+"\nControl plane: unknown: kubeconfig: stat /nonexistent/kubeconfig: no such file or directory") {
		t.Errorf("no kubeconfig: exit %d, %q", code, out)
	}
}

// TestVersionKubernetes runs tether version against a real kube-apiserver:
// an API server that does not answer, no control plane, RBAC that forbids
// reading it, and, when this machine has an address the pod proxy
// accepts, real admin servers reached through the pod proxy.
func TestVersionKubernetes(t *testing.T) {
	// An API server that is not there: the client's version, exit 0.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := writeKubeconfig(t, "gone", map[string]*rest.Config{"gone": {Host: "https://" + l.Addr().String()}})
	l.Close()
	v, _, code := versionOf(t, "--kubeconfig", gone, "--timeout", "2s")
	if code != 0 || v.Server != nil || !strings.HasPrefix(v.ServerError, "list pods app.kubernetes.io/name=tether-ca in namespace tether-system: cannot reach the API server: ") ||
		strings.Contains(v.ServerError, "tether-discovery") {
		t.Errorf("API server gone: exit %d, %+v", code, v)
	}

	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kc := writeKubeconfig(t, "test", map[string]*rest.Config{"test": env.Config})
	env.EnsureNamespace(t, "tether-system")

	v, _, code = versionOf(t, "--kubeconfig", kc)
	if code != 0 || v.Server != nil || !strings.Contains(v.ServerError, "no control plane pod answered: no pods labelled app.kubernetes.io/name=tether-ca in namespace tether-system (is Tether installed?") ||
		!strings.Contains(v.ServerError, "no pods labelled app.kubernetes.io/name=tether-injector") {
		t.Errorf("no control plane: exit %d, %+v", code, v)
	}
	out, errOut, code := run(t, "version", "--kubeconfig", kc)
	if code != 0 || !strings.HasPrefix(out, "Client: "+version.Version+"\nControl plane: unknown: no control plane pod answered: no pods labelled") || errOut != "" {
		t.Errorf("no control plane, text: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	nobody := writeKubeconfig(t, "nobody", map[string]*rest.Config{"nobody": env.UserConfig(t, "nobody")})
	v, _, code = versionOf(t, "--kubeconfig", nobody)
	if code != 0 || v.Server != nil || !strings.Contains(v.ServerError, "RBAC forbids it") || !strings.Contains(v.ServerError, `User "nobody" cannot list resource "pods"`) {
		t.Errorf("no RBAC: exit %d, %+v", code, v)
	}

	ip := hostIP(t)
	if ip == "" {
		t.Skip("this machine has no non-loopback IPv4 address; the API server's pod proxy refuses loopback pod IPs, so the end-to-end part is skipped")
	}
	// A real admin server, as tether-ca and tether-discovery run it.
	reg := prometheus.NewRegistry()
	srv := admin.New("", func() error { return nil }, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	al, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, al) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("admin server: %v", err)
		}
	}()
	runningPod(ctx, t, env, "tether-system", "tether-ca-0", "tether-ca", map[string]string{"app.kubernetes.io/name": "tether-ca"}, port(t, al.Addr().String()), ip, false)
	runningPod(ctx, t, env, "tether-system", "tether-discovery-0", "tether-discovery", map[string]string{"app.kubernetes.io/name": "tether-discovery"}, port(t, al.Addr().String()), ip, false)
	eventuallyNoFatal(t, "the CA's version through the pod proxy", 30*time.Second, func() bool {
		v, _, code = versionOf(t, "--kubeconfig", kc)
		return v.Server != nil && len(v.Server.Components) > 0 && v.Server.Components[0].Version != ""
	})
	if code != 0 || v.ServerError != "" || v.Server == nil || len(v.Server.Components) != 3 ||
		v.Server.Namespace != "tether-system" || !strings.Contains(v.Server.Where, `Kubernetes context "test" at `) {
		t.Fatalf("control plane: exit %d, %+v", code, v)
	}
	for i, want := range []struct{ component, pod, version, err string }{
		{"tether-ca", "tether-ca-0", version.Version, ""},
		{"tether-discovery", "tether-discovery-0", version.Version, ""},
		{"tether-injector", "", "", "no pods labelled app.kubernetes.io/name=tether-injector in namespace tether-system"},
	} {
		c := v.Server.Components[i]
		if c.Component != want.component || c.Pod != want.pod || c.Version != want.version || c.Revision != version.Revision() || !strings.Contains(c.Error, want.err) || (want.err == "") != (c.Error == "") {
			t.Errorf("component %d: %+v, want %+v", i, c, want)
		}
	}
	out, _, code = run(t, "version", "--kubeconfig", kc)
	t.Logf("tether version --kubeconfig:\n%s", out)
	if code != 0 || !strings.Contains(out, "Control plane (Kubernetes context \"test\" at ") || !strings.Contains(out, "  tether-ca         tether-ca-0         "+version.Version) {
		t.Errorf("text: exit %d\n%s", code, out)
	}
}
