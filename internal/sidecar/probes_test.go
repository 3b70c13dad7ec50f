package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://"))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(p, &n)
	return n
}

// probeMux serves the probes as the injector writes them (pkg/inject's
// AppProbe), so the test also pins the format between the two, with the
// pod IP podIP.
func probeMux(t *testing.T, probes map[string]inject.AppProbe, podIP string, log *slog.Logger) *http.ServeMux {
	t.Helper()
	spec, err := json.Marshal(probes)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mountAppProbes(mux, string(spec), podIP, log)
	return mux
}

func get(mux http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func TestAppProbes(t *testing.T) {
	var gotHost, gotHeader string
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost, gotHeader = r.Host, r.Header.Get("X-Probe")
		switch r.URL.Path {
		case "/ok":
			fmt.Fprintln(w, "fine")
		case "/moved":
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
		default:
			http.Error(w, "sick", http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	appTLS := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer appTLS.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := port(t, closed.Addr().String())
	closed.Close()

	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("ready", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("sick", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gl)
	defer gs.Stop()

	httpProbe := func(p int, path, scheme string, headers ...corev1.HTTPHeader) inject.AppProbe {
		return inject.AppProbe{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt(p), Scheme: corev1.URIScheme(scheme), HTTPHeaders: headers}}
	}
	svc := func(s string) *string { return &s }
	probes := map[string]inject.AppProbe{
		"/app-health/web/livez":     httpProbe(port(t, app.URL), "/ok", "HTTP", corev1.HTTPHeader{Name: "X-Probe", Value: "kubelet"}, corev1.HTTPHeader{Name: "Host", Value: "web.local"}),
		"/app-health/web/readyz":    httpProbe(port(t, app.URL), "/broken", ""),
		"/app-health/web/startupz":  httpProbe(port(t, app.URL), "moved", "HTTP"),
		"/app-health/tls/livez":     httpProbe(port(t, appTLS.URL), "/", "HTTPS"),
		"/app-health/tcp/livez":     {TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(port(t, app.URL))}},
		"/app-health/tcp/readyz":    {TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(closedPort)}},
		"/app-health/grpc/livez":    {GRPC: &corev1.GRPCAction{Port: int32(port(t, gl.Addr().String())), Service: svc("ready")}},
		"/app-health/grpc/readyz":   {GRPC: &corev1.GRPCAction{Port: int32(port(t, gl.Addr().String())), Service: svc("sick")}},
		"/app-health/grpc/startupz": {GRPC: &corev1.GRPCAction{Port: int32(closedPort)}, TimeoutSeconds: 1},
	}
	mux := probeMux(t, probes, "", slog.New(slog.DiscardHandler))
	for _, tt := range []struct {
		path string
		code int
		msg  string
	}{
		{"/app-health/web/livez", 200, "ok"},
		{"/app-health/web/readyz", 503, "HTTP 500"},
		{"/app-health/web/startupz", 200, "ok"},
		{"/app-health/tls/livez", 200, "ok"},
		{"/app-health/tcp/livez", 200, "ok"},
		{"/app-health/tcp/readyz", 503, "refused"},
		{"/app-health/grpc/livez", 200, "ok"},
		{"/app-health/grpc/readyz", 503, "NOT_SERVING"},
		{"/app-health/grpc/startupz", 503, "probe failed"},
		{"/app-health/nobody/livez", 404, ""},
	} {
		t.Run(tt.path, func(t *testing.T) {
			rec := get(mux, tt.path)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.msg) {
				t.Errorf("HTTP %d %q, want %d with %q", rec.Code, rec.Body, tt.code, tt.msg)
			}
		})
	}
	get(mux, "/app-health/web/livez")
	if gotHost != "web.local" || gotHeader != "kubelet" {
		t.Errorf("app saw Host %q X-Probe %q, want the probe's headers", gotHost, gotHeader)
	}
}

func TestAppProbesBadSpec(t *testing.T) {
	for _, tt := range []struct{ spec, want string }{
		{`{`, "unexpected end"},
		{`[]`, "cannot unmarshal"},
		{`{"/healthz": {"tcpSocket": {"port": 80}}}`, "must start with /app-health/"},
		{`{"/app-health/a/livez": {}}`, "exactly one"},
		{`{"/app-health/a/livez": {"tcpSocket": {"port": 80}, "grpc": {"port": 81}}}`, "exactly one"},
		{`{"/app-health/a/livez": {"tcpSocket": {"port": 0}}}`, "port 0"},
		{`{"/app-health/a/livez": {"httpGet": {"port": 70000}}}`, "port 70000"},
		{`{"/app-health/a/livez": {"httpGet": {"port": "http"}}}`, "cannot unmarshal"},
		{`{"/app-health/a/livez": {"httpGet": {"port": 80, "scheme": "FTP"}}}`, "scheme"},
		{`{"/app-health/a/livez": {"tcpSocket": {"port": 80}, "timeoutSeconds": -1}}`, "negative"},
	} {
		t.Run(tt.spec, func(t *testing.T) {
			if _, err := parseAppProbes(tt.spec); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want one with %q", err, tt.want)
			}
			// Served, a bad spec fails every app probe visibly.
			mux := http.NewServeMux()
			mountAppProbes(mux, tt.spec, "", slog.New(slog.DiscardHandler))
			if rec := get(mux, "/app-health/a/livez"); rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "misconfigured") {
				t.Errorf("HTTP %d %q, want 500 misconfigured", rec.Code, rec.Body)
			}
		})
	}
	if m, err := parseAppProbes(" "); err != nil || m != nil {
		t.Errorf("empty spec: %v %v", m, err)
	}
}

// TestAppProbesAtThePodIP: with the pod IP, the probes reach the app there,
// from the address the sidecar delivers inbound traffic from, as the
// kubelet's probes would; an app on 127.0.0.1 only is probed there.
// 127.0.0.2 stands for the pod IP.
func TestAppProbesAtThePodIP(t *testing.T) {
	listen := func(addr string) (net.Listener, int) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("cannot listen on %s here: %v", addr, err)
		}
		p := port(t, l.Addr().String())
		if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(p))); err == nil {
			c.Close()
			t.Skipf("something listens on 127.0.0.1:%d too", p)
		}
		return l, p
	}
	// The app on the pod IP only: HTTP, and gRPC health.
	hl, podHTTP := listen("127.0.0.2:0")
	var mu sync.Mutex
	var caller, host string
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		caller, host = r.RemoteAddr, r.Host
		mu.Unlock()
	})}
	go app.Serve(hl)
	defer app.Close()
	gl, podGRPC := listen("127.0.0.2:0")
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("ready", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gl)
	defer gs.Stop()
	// The app on 127.0.0.1 only.
	lo := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer lo.Close()
	loHTTP := port(t, lo.URL)

	httpGet := func(p int) inject.AppProbe {
		return inject.AppProbe{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt(p)}}
	}
	tcp := func(p int) inject.AppProbe {
		return inject.AppProbe{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(p)}}
	}
	ready := "ready"
	probes := map[string]inject.AppProbe{
		"/app-health/pod/livez":    httpGet(podHTTP),
		"/app-health/pod/readyz":   tcp(podHTTP),
		"/app-health/pod/startupz": {GRPC: &corev1.GRPCAction{Port: int32(podGRPC), Service: &ready}},
		"/app-health/lo/livez":     httpGet(loHTTP),
		"/app-health/lo/readyz":    tcp(loHTTP),
	}
	for _, tt := range []struct {
		podIP   string
		pod, lo int // HTTP status of the probes of each app
		log     string
	}{
		{"127.0.0.2", 200, 200, ""},
		{"::ffff:127.0.0.2", 200, 200, ""}, // the IPv4 address
		{"", 503, 200, ""},                 // no pod IP: 127.0.0.1 only
		{"not-an-ip", 503, 200, "TETHER_POD_IP is not an IP address"},
	} {
		var log bytes.Buffer
		mux := probeMux(t, probes, tt.podIP, slog.New(slog.NewTextHandler(&log, nil)))
		for path := range probes {
			want := tt.lo
			if strings.HasPrefix(path, "/app-health/pod/") {
				want = tt.pod
			}
			if rec := get(mux, path); rec.Code != want {
				t.Errorf("pod IP %q: %s: HTTP %d %q, want %d", tt.podIP, path, rec.Code, rec.Body, want)
			}
		}
		if !strings.Contains(log.String(), tt.log) || tt.log == "" && log.Len() > 0 {
			t.Errorf("pod IP %q: log %q, want %q", tt.podIP, log.String(), tt.log)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(caller, capture.DeliverySource.String()+":") || host != fmt.Sprintf("127.0.0.2:%d", podHTTP) {
		t.Errorf("the app on the pod IP saw a probe from %s for Host %s, want one from %s for 127.0.0.2:%d", caller, host, capture.DeliverySource, podHTTP)
	}
}
