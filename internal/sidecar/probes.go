package sidecar

// The app probes: tether-injector rewrites an app container's HTTP, TCP
// and gRPC probes to GET /app-health/<container>/<kind> on the admin port,
// and passes the originals in TETHER_APP_PROBES. The sidecar runs them
// against the app, so the kubelet's probes pass in strict mode, where the
// kubelet itself (outside the mesh) may not reach the app. It reaches the
// app as it delivers inbound traffic: at the pod IP (TETHER_POD_IP), where
// the kubelet would have sent the probe, from capture.DeliverySource, and
// if that is refused (an app listening on loopback only) on 127.0.0.1.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// AppProbesEnv names the environment variable holding the app probes, a
// JSON object of path → probe in the Kubernetes Probe format (a subset:
// httpGet, tcpSocket or grpc, with a numeric port, and timeoutSeconds).
const AppProbesEnv = "TETHER_APP_PROBES"

// PodIPEnv names the environment variable with the pod's IP, where the
// app probes go (see pkg/inject.PodIPEnv).
const PodIPEnv = "TETHER_POD_IP"

const appProbePrefix = "/app-health/"

type appProbe struct {
	app     appAddr // where the app is; set by mountAppProbes
	HTTPGet *struct {
		Path        string `json:"path"`
		Port        int    `json:"port"`
		Scheme      string `json:"scheme"`
		HTTPHeaders []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"httpHeaders"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port int `json:"port"`
	} `json:"tcpSocket"`
	GRPC *struct {
		Port    int     `json:"port"`
		Service *string `json:"service"`
	} `json:"grpc"`
	TimeoutSeconds int `json:"timeoutSeconds"`
}

// parseAppProbes parses and checks the value of AppProbesEnv.
func parseAppProbes(spec string) (map[string]appProbe, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, nil
	}
	var m map[string]appProbe
	if err := json.Unmarshal([]byte(spec), &m); err != nil {
		return nil, fmt.Errorf("%s: %v", AppProbesEnv, err)
	}
	for path, p := range m {
		if !strings.HasPrefix(path, appProbePrefix) || strings.ContainsAny(path, " ?#") {
			return nil, fmt.Errorf("%s: path %q must start with %s", AppProbesEnv, path, appProbePrefix)
		}
		n, port := 0, 0
		if p.HTTPGet != nil {
			n, port = n+1, p.HTTPGet.Port
			if s := strings.ToUpper(p.HTTPGet.Scheme); s != "" && s != "HTTP" && s != "HTTPS" {
				return nil, fmt.Errorf("%s: %s: scheme %q, want HTTP or HTTPS", AppProbesEnv, path, p.HTTPGet.Scheme)
			}
		}
		if p.TCPSocket != nil {
			n, port = n+1, p.TCPSocket.Port
		}
		if p.GRPC != nil {
			n, port = n+1, p.GRPC.Port
		}
		if n != 1 {
			return nil, fmt.Errorf("%s: %s: want exactly one of httpGet, tcpSocket and grpc", AppProbesEnv, path)
		}
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("%s: %s: port %d, want 1 to 65535", AppProbesEnv, path, port)
		}
		if p.TimeoutSeconds < 0 {
			return nil, fmt.Errorf("%s: %s: negative timeoutSeconds", AppProbesEnv, path)
		}
	}
	return m, nil
}

// appAddr is where the probes reach the app: at the pod IP, from
// capture.DeliverySource (the capture rules send the sidecar's other
// connections to its pod IP back to its inbound listener), or on 127.0.0.1
// if that is refused or there is no IPv4 pod IP (IPv6 has no address to
// bind that the capture rules let through).
type appAddr struct {
	pod netip.Addr // the zero Addr: 127.0.0.1 only
}

// podAddr parses podIP, the value of PodIPEnv. Empty, or not an IP address
// (logged), it gives 127.0.0.1 only.
func podAddr(podIP string, log *slog.Logger) appAddr {
	if podIP == "" {
		return appAddr{}
	}
	a, err := netip.ParseAddr(podIP)
	if err != nil {
		log.Warn("app probes go to 127.0.0.1: "+PodIPEnv+" is not an IP address", slog.String("value", podIP))
		return appAddr{}
	}
	if a = a.Unmap(); !a.Is4() {
		return appAddr{}
	}
	return appAddr{pod: a}
}

// host is where a probe on port is addressed, as the kubelet's would be:
// the pod IP (else 127.0.0.1) and port.
func (a appAddr) host(port int) string {
	if a.pod.IsValid() {
		return netip.AddrPortFrom(a.pod, uint16(port)).String()
	}
	return loopback(port)
}

// dial connects to the app on port.
func (a appAddr) dial(ctx context.Context, port int) (net.Conn, error) {
	var d net.Dialer
	if !a.pod.IsValid() {
		return d.DialContext(ctx, "tcp", loopback(port))
	}
	from := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(capture.DeliverySource, 0))}
	c, err := from.DialContext(ctx, "tcp", a.host(port))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return c, err
	}
	c, err2 := d.DialContext(ctx, "tcp", loopback(port))
	if err2 != nil {
		return nil, fmt.Errorf("%w; and on loopback: %w", err, err2)
	}
	return c, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// mountAppProbes serves the app probes of spec on mux, run against the app
// at podIP (see appAddr). If spec is invalid it logs why and every
// /app-health/ path answers 500 with the reason, so the pod's probes fail
// visibly rather than pass without checking.
func mountAppProbes(mux *http.ServeMux, spec, podIP string, log *slog.Logger) {
	probes, err := parseAppProbes(spec)
	if err != nil {
		log.Error("app probes disabled", slog.Any("error", err))
		mux.HandleFunc("GET "+appProbePrefix, func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "app probes misconfigured: "+err.Error(), http.StatusInternalServerError)
		})
		return
	}
	app := podAddr(podIP, log)
	for path, p := range probes {
		p.app = app
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			if err := p.run(r.Context()); err != nil {
				http.Error(w, "probe failed: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
	}
}

// run performs the probe against the app, as the kubelet would against
// the pod: HTTP status 200-399, a TCP connect, or a gRPC health check
// answering SERVING.
func (p appProbe) run(ctx context.Context) error {
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		return p.runHTTP(ctx)
	case p.TCPSocket != nil:
		c, err := p.app.dial(ctx, p.TCPSocket.Port)
		if err != nil {
			return err
		}
		return c.Close()
	case p.GRPC != nil:
		return p.runGRPC(ctx)
	}
	return errors.New("empty probe")
}

func (p appProbe) runHTTP(ctx context.Context) error {
	h := p.HTTPGet
	scheme := "http"
	if strings.EqualFold(h.Scheme, "HTTPS") {
		scheme = "https"
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+p.app.host(h.Port)+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/tether")
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	client := &http.Client{
		// The kubelet does not verify an app's certificate either.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return p.app.dial(ctx, h.Port) }},
		// A redirect is a success (the kubelet counts 3xx as one).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

func (p appProbe) runGRPC(ctx context.Context) error {
	conn, err := grpc.NewClient(p.app.host(p.GRPC.Port), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return p.app.dial(ctx, p.GRPC.Port) }))
	if err != nil {
		return err
	}
	defer conn.Close()
	req := &healthpb.HealthCheckRequest{}
	if p.GRPC.Service != nil {
		req.Service = *p.GRPC.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, req)
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health %s", resp.GetStatus())
	}
	return nil
}
