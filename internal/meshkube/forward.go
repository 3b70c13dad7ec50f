package meshkube

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// ForwardGet port-forwards to the pod's port through the API server
// (pods/portforward), as kubectl port-forward does, and GETs path (with
// its query, if any) on it.
// It is how the CLI reads what a control plane process answers only on
// its pod's loopback (tether-discovery's /debug/sidecars and /debug/flows):
// the pod proxy reaches the pod's IP, the port-forward its loopback. The
// answer is refused beyond limit bytes; ctx bounds the whole exchange.
func ForwardGet(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, p *corev1.Pod, port int, path string, limit int64) ([]byte, error) {
	what := fmt.Sprintf("port-forward to pod %s/%s port %d", p.Namespace, p.Name, port)
	u := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(p.Namespace).Name(p.Name).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	dialer := httpstream.Dialer(spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u))
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, ready, io.Discard, &lockedBuilder{b: &errOut})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	// Ending the context ends ForwardPorts, which closes its listener
	// (closing it here too would log an error).
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		return nil, fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: no answer within --timeout", what)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		return nil, fmt.Errorf("%s: no local port: %v", what, err)
	}
	target, err := url.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	target.Scheme, target.Host = "http", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s through the %s: %w %s", path, what, err, strings.TrimSpace(errOut.String()))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("GET %s through the %s: %w", path, what, err)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s through the %s: %s", path, what, resp.Status)
	case int64(len(body)) > limit:
		return nil, fmt.Errorf("GET %s through the %s: answer larger than %d bytes", path, what, limit)
	}
	return body, nil
}

type lockedBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
