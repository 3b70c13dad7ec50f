//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// appUID is the UID the test's app containers run as (not the sidecar's).
const appUID = 1000

// TestInjectedPodsTalk runs two injected pods, web-0 (ServiceAccount web)
// and api-0 (api), behind Services web and api, on the mesh of startMesh,
// and calls api from web's app container (UID 1000, its traffic and DNS
// captured by the stored tether-init rules). api's app listens on its pod
// IP only, web's on 127.0.0.1 only (its pod opts port 8080 in with
// tether.dev/localhost-inbound-ports): each sidecar delivers calls, and
// runs the app's readiness probe, where its app listens.
//
//   - by name and by ClusterIP, through web's and api's sidecars over mTLS:
//     the name is answered by web's sidecar from discovery, and api's
//     sidecar logs the call as allowed from spiffe://cluster.local/ns/shop/sa/web;
//   - web's loopback-only admin listener (127.0.0.1:9091, not opted in)
//     is not reached by a tether/1 stream from api, a mesh identity web
//     admits: web's sidecar tries the pod IP only, and refuses;
//   - the Services with no sidecar behind them (the API server's kubernetes,
//     tether-system's) are not in web's view, and a call to the API server
//     by name passes through web's sidecar unchanged;
//   - with an AccessPolicy letting only ServiceAccount batch reach api: the
//     name is NXDOMAIN for web (cluster DNS still has it); a call to api's
//     ClusterIP is refused by web's own sidecar at once (it knows that
//     address only as hidden, docs/sidecar.md) and api sees nothing of it;
//     a call to api-0's pod IP leaves web as plaintext (api is outside
//     the mesh for web) and api's strict inbound refuses it;
//     and mTLS with web's own SVID (from web's Workload API) is denied by
//     api's authoritative inbound check, which names the policy;
//   - with a second AccessPolicy letting web reach api on port 9090 only:
//     web's sidecar refuses a call to port 80 itself, at once, naming the
//     rule in its access log, and api sees nothing of it;
//   - with both policies deleted, web reaches api again, by name and by
//     ClusterIP, with no restart.
//
// No endpoint controller runs: the test writes the EndpointSlices (with
// targetRefs to the pods) and kube-proxy's DNAT rules for the Services.
func TestInjectedPodsTalk(t *testing.T) {
	for _, tool := range []string{"curl", "dig"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (make deps installs it)", tool)
			}
			t.Skipf("needs %s in the app containers", tool)
		}
	}
	m := startMesh(t, "shop", "web", "api")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	httpPort := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}
	adminPort := corev1.ServicePort{Name: "admin", Port: 9090, TargetPort: intstr.FromInt32(9090)}
	apiSvc := m.createService(ctx, "shop", "api", httpPort, adminPort)
	webSvc := m.createService(ctx, "shop", "web", httpPort)
	// web's app listens on 127.0.0.1 only, so its pod opts its port in to
	// loopback delivery; its loopback-only admin listener (9091) is not.
	webPod := appPod("shop", "web-0", "web", listenOnLoopback)
	webPod.Annotations = map[string]string{inject.AnnotationLocalhostInboundPorts: "8080"}
	web := m.runPod(ctx, webPod)
	if args := strings.Join(web.sidecar.Args, " "); !strings.Contains(args, "--localhost-inbound-ports 8080") {
		t.Fatalf("web's injected sidecar args lack --localhost-inbound-ports 8080: %s", args)
	}
	webAdmin := make(chan string, 8)
	serveLoopbackAdmin(t, web, 9091, webAdmin)
	api := m.runPod(ctx, appPod("shop", "api-0", "api", listenOnPodIP))
	for _, p := range []*meshPod{web, api} {
		if body, err := p.rt.probe(m.kubelet, p.app, p.app.ReadinessProbe); err != nil {
			t.Fatalf("%s: app readiness probe through the sidecar: %v %q", p.pod.Name, err, body)
		}
	}
	m.publish(ctx, apiSvc, api)
	m.publish(ctx, webSvc, web)
	webID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	apiID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")
	apiEndpoint := netip.AddrPortFrom(api.ip, 8080)
	web.waitView("api-0 serving shop/api", func(v sidecarView) bool {
		return strings.Contains(strings.Join(v.endpoints("shop/api"), " "), apiEndpoint.String())
	})
	api.waitView("web-0 serving shop/web", func(v sidecarView) bool {
		return strings.Contains(strings.Join(v.endpoints("shop/web"), " "), web.ip.String()+":8080")
	})

	byName := "http://api.shop.svc.cluster.local/"
	byIP := "http://" + apiSvc.Spec.ClusterIP + "/"
	toPod := "http://" + apiEndpoint.String() + "/"
	calls := func(phase string) {
		t.Helper()
		for _, url := range []string{byName, byIP} {
			webMark, apiMark := web.logMark(), api.logMark()
			if body, err := web.curl(ctx, url); err != nil || body != "api-0: /\n" {
				t.Fatalf("%s: web → %s: %q, %v", phase, url, body, err)
			}
			in := api.waitLog(apiMark, "inbound from web allowed", func(e accessEntry) bool {
				return e.Direction == "inbound" && e.Decision == "allow" && e.SourceID == webID.String()
			})
			if in.Destination != apiEndpoint.String() {
				t.Fatalf("%s: web → %s: api's sidecar delivered the call to %s, want the pod IP %s", phase, url, in.Destination, apiEndpoint)
			}
			out := web.waitLog(webMark, "outbound to api allowed", func(e accessEntry) bool {
				return e.Direction == "outbound" && e.Decision == "allow" && e.DestinationID == apiID.String()
			})
			t.Logf("%s: web → %s: api's sidecar: inbound %s from %s to %s; web's: outbound to %s (%s), rule %q",
				phase, url, in.Decision, in.SourceID, in.Destination, out.Destination, out.DestinationID, out.Rule)
		}
	}

	// 1. No AccessPolicy names api: the mesh default (allow-mesh) lets web in.
	calls("allow-mesh")
	web.checkDNSAnswered("mesh") // the name came from discovery's table
	mark := web.logMark()
	if body, err := api.curl(ctx, "http://web.shop.svc.cluster.local/"); err != nil || body != "web-0: /\n" {
		t.Fatalf("api → web by name: %q, %v", body, err)
	}
	if in := web.waitLog(mark, "inbound from api allowed", func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "allow"
	}); in.Destination != "127.0.0.1:8080" {
		t.Fatalf("api → web: web's sidecar delivered the call to %s, want 127.0.0.1:8080 (web listens there only, and opted 8080 in)", in.Destination)
	}
	// Only the Services of pods with the sidecar are mesh services: the
	// API server's (its endpoints have no targetRef) and the control
	// plane's are not, so web's sidecar passes a call to the API server
	// through as it is (kube-proxy's stand-in relays it).
	var inView []string
	for _, s := range web.view().Services {
		inView = append(inView, s.Service)
	}
	if slices.Sort(inView); !slices.Equal(inView, []string{"shop/api", "shop/web"}) {
		t.Fatalf("web's view holds services %v, want only shop/api and shop/web", inView)
	}
	kubeSvc, err := m.env.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeMark := web.logMark()
	if body, err := web.curl(ctx, "https://kubernetes.default.svc.cluster.local/version", "-k"); err != nil || !strings.Contains(body, `"gitVersion"`) {
		t.Fatalf("web → the API server: %q, %v", body, err)
	}
	pass := web.waitLog(kubeMark, "outbound to the API server", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Destination == net.JoinHostPort(kubeSvc.Spec.ClusterIP, "443")
	})
	if pass.DestinationID != "" || !strings.Contains(pass.Reason, "passthrough") {
		t.Fatalf("web → the API server: web's sidecar logged %+v, want a passthrough", pass)
	}
	t.Logf("web → https://kubernetes.default.svc.cluster.local/version: passed through by web's sidecar (%q)", pass.Reason)

	// The loopback-only listener attack: api, a mesh identity web's
	// policy admits, opens a tether/1 stream to web's pod IP naming port
	// 9091, where web's app listens on 127.0.0.1 only. web's sidecar
	// delivers at the pod IP only on that port (not opted in), so it is
	// refused there and the admin listener sees nothing.
	apiSVIDs := api.x509Source(ctx)
	webAdminAddr := netip.AddrPortFrom(web.ip, 9091)
	mark = web.logMark()
	adminDeny, err := meshOpen(m.node, apiSVIDs, webAdminAddr, webID)
	if err != nil || adminDeny == "" {
		t.Fatalf("tether/1 stream from api to web's loopback-only port 9091: deny %q, %v; want a refusal", adminDeny, err)
	}
	refusedAdmin := web.waitLog(mark, "web's refusal of port 9091", func(e accessEntry) bool {
		return e.Direction == "inbound" && e.SourceID == apiID.String() && strings.HasSuffix(e.Destination, ":9091")
	})
	if refusedAdmin.Destination != webAdminAddr.String() || !strings.Contains(refusedAdmin.Reason, "connection refused") {
		t.Fatalf("web's sidecar logged %+v for port 9091, want delivery tried at the pod IP %s only, refused", refusedAdmin, webAdminAddr)
	}
	select {
	case from := <-webAdmin:
		t.Fatalf("web's loopback-only admin listener was reached from %s", from)
	default:
	}
	t.Logf("api → web:9091 (loopback-only admin listener): refused by web's sidecar, %q", adminDeny)

	// The test's own tether/1 client, with web's SVID from web's Workload
	// API, is let in too (from the node, past web's sidecar): what it
	// checks below is the policy, not the client.
	webSVIDs := web.x509Source(ctx)
	if deny, err := meshOpen(m.node, webSVIDs, apiEndpoint, apiID); err != nil || deny != "" {
		t.Fatalf("tether/1 stream with web's SVID to api-0 before any policy: deny %q, %v", deny, err)
	}

	// 2. Only ServiceAccount batch may reach api.
	m.accessPolicy(ctx, "shop", "api-from-batch", "api", nil, "batch")
	web.waitView("shop/api no longer reachable", func(v sidecarView) bool {
		_, _, ok := v.port("shop/api", 80)
		return !ok
	})
	// web's sidecar answers api's name NXDOMAIN (cluster DNS, which it
	// forwards other names to, still has it)...
	if out, err := web.rt.exec(ctx, web.app, "dig", "+tries=1", "+time=2", "api.shop.svc.cluster.local", "A"); err != nil || !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("web's DNS for api.shop.svc.cluster.local under the policy: %v\n%s", err, out)
	}
	web.checkDNSAnswered("unreachable")
	if rcode, ips := queryDNS(t, m.node, netip.AddrPortFrom(nodeIP, 53), "api.shop.svc.cluster.local."); rcode != dns.RcodeSuccess || len(ips) != 1 || ips[0].String() != apiSvc.Spec.ClusterIP {
		t.Fatalf("cluster DNS for api.shop.svc.cluster.local: rcode %s, %v", dns.RcodeToString[rcode], ips)
	}
	start := time.Now()
	if body, err := web.curl(ctx, byName); err == nil || !strings.Contains(err.Error(), "resolve host") {
		t.Fatalf("web → %s under the policy: %q, %v (want: could not resolve)", byName, body, err)
	}
	t.Logf("web → %s under the policy: unresolved in %v", byName, time.Since(start).Round(time.Millisecond))
	// ...refuses a call to api's ClusterIP itself, at once: discovery sends
	// that address (without the name) for its DNS server, and it must not
	// leave as plaintext (test/cluster found it did)...
	{
		webMark, apiMark := web.logMark(), api.logMark()
		start := time.Now()
		if body, err := web.curl(ctx, byIP); err == nil {
			t.Fatalf("web → %s under the policy: %q", byIP, body)
		}
		took := time.Since(start)
		early := web.waitLog(webMark, "outbound denial of api's ClusterIP", func(e accessEntry) bool {
			return e.Direction == "outbound" && e.Decision == "deny"
		})
		if !strings.Contains(early.Rule, "unknown service") || early.Destination != apiSvc.Spec.ClusterIP+":80" {
			t.Fatalf("web → %s under the policy: web's sidecar logged %+v, want a denial of %s:80 as an unknown service", byIP, early, apiSvc.Spec.ClusterIP)
		}
		if took > quickRefusal {
			t.Fatalf("web → %s under the policy took %v to be refused", byIP, took)
		}
		time.Sleep(200 * time.Millisecond)
		if e, ok := api.findLog(apiMark, func(e accessEntry) bool { return e.Direction == "inbound" }); ok {
			t.Fatalf("web → %s under the policy reached api's sidecar: %+v", byIP, e)
		}
		t.Logf("web → %s under the policy: refused by web's sidecar in %v (%s)", byIP, took.Round(time.Millisecond), early.Rule)
	}
	// ...and calls api's pod IP as a destination outside the mesh (it is
	// not told the endpoints of a service it may not reach): it leaves as
	// plaintext, and api's strict inbound refuses it.
	for _, url := range []string{toPod} {
		webMark, apiMark := web.logMark(), api.logMark()
		start := time.Now()
		if body, err := web.curl(ctx, url); err == nil {
			t.Fatalf("web → %s under the policy: %q", url, body)
		}
		took := time.Since(start)
		refused := api.waitLog(apiMark, "inbound plaintext from web-0 refused", func(e accessEntry) bool {
			return e.Direction == "inbound" && e.Decision == "deny" && strings.HasPrefix(e.Source, web.ip.String()+":") &&
				strings.Contains(e.Reason, "mTLS handshake")
		})
		out := web.waitLog(webMark, "outbound passthrough", func(e accessEntry) bool { return e.Direction == "outbound" })
		if out.DestinationID != "" || !strings.Contains(out.Reason, "passthrough") {
			t.Fatalf("web → %s under the policy: web's sidecar logged %+v, want a passthrough", url, out)
		}
		if took > quickRefusal {
			t.Fatalf("web → %s under the policy took %v to be refused", url, took)
		}
		t.Logf("web → %s under the policy: refused in %v; web's sidecar: %q; api's sidecar: %s %s (%s)",
			url, took.Round(time.Millisecond), out.Reason, refused.Direction, refused.Decision, refused.Reason)
	}
	// api's inbound check is authoritative: mTLS with web's own SVID,
	// from web's pod (web's sidecar passes it through), is denied by the
	// policy.
	apiMark := api.logMark()
	var deny string
	poll(t, "api-0's inbound to deny web", 10*time.Second, func() error {
		d, err := meshOpen(web.ns, webSVIDs, apiEndpoint, apiID)
		if err == nil && d == "" {
			return errors.New("allowed")
		}
		deny = d
		return err
	})
	if !strings.Contains(deny, webID.String()) {
		t.Fatalf("api-0 denied web's stream with %q, which does not name %s", deny, webID)
	}
	denied := api.waitLog(apiMark, "inbound from web denied by policy", func(e accessEntry) bool {
		return e.Direction == "inbound" && e.Decision == "deny" && e.SourceID == webID.String() && e.Rule != ""
	})
	t.Logf("tether/1 stream from web-0 with web's SVID: api's sidecar denied it, rule %q", denied.Rule)

	// 3. web may reach api, on port 9090 only: api is in web's view again,
	// so web's sidecar refuses port 80 itself.
	m.accessPolicy(ctx, "shop", "api-admin-from-web", "api", []int64{9090}, "web")
	var rule string
	web.waitView("shop/api:9090 allowed and :80 denied", func(v sidecarView) bool {
		a80, r, ok80 := v.port("shop/api", 80)
		a9090, _, _ := v.port("shop/api", 9090)
		rule = r
		return ok80 && !a80 && a9090
	})
	webMark, apiMark := web.logMark(), api.logMark()
	start = time.Now()
	if body, err := web.curl(ctx, byName); err == nil {
		t.Fatalf("web → %s with port 80 denied: %q", byName, body)
	}
	took := time.Since(start)
	refused := web.waitLog(webMark, "outbound to shop/api:80 denied", func(e accessEntry) bool {
		return e.Direction == "outbound" && e.Decision == "deny" && e.Destination == "shop/api:80"
	})
	if refused.Rule != rule || !strings.Contains(rule, "no AccessPolicy allows "+webID.String()+" to shop/api:80") {
		t.Fatalf("web's sidecar refused shop/api:80 with rule %q, want the view's rule %q naming the policy decision", refused.Rule, rule)
	}
	if took > quickRefusal || refused.DurationMS > 100 {
		t.Fatalf("web → shop/api:80 refused after %v (sidecar: %.1f ms)", took, refused.DurationMS)
	}
	if e, ok := api.findLog(apiMark, func(e accessEntry) bool { return e.Direction == "inbound" }); ok {
		t.Fatalf("a call web's sidecar refused reached api's sidecar: %+v", e)
	}
	t.Logf("web → %s with port 80 denied: refused by web's sidecar in %v, rule %q", byName, took.Round(time.Millisecond), refused.Rule)

	// 4. No policy: web reaches api again, with the same processes.
	m.deleteAccessPolicy(ctx, "shop", "api-from-batch")
	m.deleteAccessPolicy(ctx, "shop", "api-admin-from-web")
	web.waitView("shop/api:80 allowed again", func(v sidecarView) bool {
		a, _, ok := v.port("shop/api", 80)
		return ok && a
	})
	poll(t, "api-0's inbound to let web in again", 10*time.Second, func() error {
		d, err := meshOpen(m.node, webSVIDs, apiEndpoint, apiID)
		if err == nil && d != "" {
			return errors.New(d)
		}
		return err
	})
	calls("policies deleted")
	for _, p := range []*meshPod{web, api} {
		select {
		case <-p.proc.Done():
			t.Fatalf("%s's sidecar exited: %v", p.pod.Name, p.proc.Err())
		default:
		}
	}
	t.Logf("done %v after the test began", time.Since(m.began).Round(time.Millisecond))
}

// serveLoopbackAdmin serves a stand-in admin listener on 127.0.0.1:port in
// the pod, as an app's debug or admin port; each connection's source goes
// to reached.
func serveLoopbackAdmin(t *testing.T, p *meshPod, port int, reached chan<- string) {
	t.Helper()
	l, err := p.ns.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		select {
		case reached <- c.RemoteAddr().String():
		default:
		}
		io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nadmin secrets\n")
		c.Close()
	})
}

// appPod is a pod with one app container, named for its ServiceAccount,
// serving HTTP on 8080 as UID 1000 with no capabilities, with env and a
// readiness probe.
func appPod(namespace, name, sa string, env ...corev1.EnvVar) *corev1.Pod {
	no, uid := false, int64(appUID)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app": sa}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers: []corev1.Container{{
				Name: sa, Image: "example.com/" + sa + ":1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				Env:   env,
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: &uid, RunAsGroup: &uid, AllowPrivilegeEscalation: &no,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

// createService creates a ClusterIP Service selecting app=name.
func (m *mesh) createService(ctx context.Context, namespace, name string, ports ...corev1.ServicePort) *corev1.Service {
	m.t.Helper()
	svc, err := m.env.Client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}, metav1.CreateOptions{})
	if err != nil {
		m.t.Fatal(err)
	}
	return svc
}

// publish does for a ready pod behind svc what the EndpointSlice
// controller and kube-proxy would: an EndpointSlice with the pod's address
// and a targetRef to it, and DNAT rules for the Service's ports.
func (m *mesh) publish(ctx context.Context, svc *corev1.Service, p *meshPod) {
	t := m.t
	t.Helper()
	checkSelects(t, svc, p.pod)
	ready, tcp := true, corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-" + p.pod.Name, Namespace: svc.Namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "e2e.tether.dev",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{p.ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.pod.Namespace, Name: p.pod.Name, UID: p.pod.UID},
		}},
	}
	for _, sp := range svc.Spec.Ports {
		name, port := sp.Name, int32(p.rt.port(p.app, sp.TargetPort))
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &tcp})
		kubeProxy(t, m.node, svc.Spec.ClusterIP, int(sp.Port), netip.AddrPortFrom(p.ip, uint16(port)))
	}
	if _, err := m.env.Client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// accessPolicy creates an AccessPolicy letting ServiceAccount sa of the
// same namespace reach service (on ports; none means every port).
func (m *mesh) accessPolicy(ctx context.Context, namespace, name, service string, ports []int64, sa string) {
	m.t.Helper()
	dest := map[string]any{"service": service}
	if len(ports) > 0 {
		ps := make([]any, len(ports))
		for i, p := range ports {
			ps[i] = p
		}
		dest["ports"] = ps
	}
	ap := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.SchemeGroupVersion.String(), "kind": "AccessPolicy",
		"metadata": map[string]any{"name": name, "namespace": namespace},
		"spec": map[string]any{
			"destination": dest,
			"sources":     []any{map[string]any{"serviceAccount": map[string]any{"name": sa}}},
		},
	}}
	if _, err := m.policies(namespace).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
		m.t.Fatalf("create AccessPolicy %s/%s: %v", namespace, name, err)
	}
}

func (m *mesh) deleteAccessPolicy(ctx context.Context, namespace, name string) {
	m.t.Helper()
	if err := m.policies(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		m.t.Fatalf("delete AccessPolicy %s/%s: %v", namespace, name, err)
	}
}

func (m *mesh) policies(namespace string) dynamic.ResourceInterface {
	m.t.Helper()
	dc, err := dynamic.NewForConfig(m.env.Config)
	if err != nil {
		m.t.Fatal(err)
	}
	return dc.Resource(policy.SchemeGroupVersionResource).Namespace(namespace)
}

// quickRefusal bounds how long a refused curl from a pod may take. It is
// wall-clock time of the whole curl, run in the pod's app container: on
// 2 busy cores under make test this alone measured 1.1 to 1.8 s. curl's
// --max-time is 5 s, so an answer within 3 s still shows a refusal, not a
// hang; the sidecar's own decision time is bounded from its access log.
const quickRefusal = 3 * time.Second

// curl runs curl in the pod's app container (kubectl exec): as its UID,
// in its network namespace (so tether-init's rules capture its DNS and
// connections) and with its resolv.conf, with flags added. It returns the
// body, or an error with curl's message.
func (p *meshPod) curl(ctx context.Context, url string, flags ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// -sS: no progress meter, but curl's error message.
	cmd := append([]string{"curl", "-sS", "--max-time", "5"}, flags...)
	out, err := p.rt.exec(ctx, p.app, append(cmd, url)...)
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return "", fmt.Errorf("curl %s from %s: exit %d: %s", url, p.pod.Name, ee.ExitCode(), strings.TrimSpace(out))
	}
	if err != nil {
		return "", fmt.Errorf("curl %s from %s: %w", url, p.pod.Name, err)
	}
	return out, nil
}

// x509Source is what the app container gets from the Workload API socket
// the injector mounted into it: the pod's SVID and bundle. It is closed
// when the test ends.
func (p *meshPod) x509Source(ctx context.Context) *workloadapi.X509Source {
	t := p.m.t
	t.Helper()
	socket := p.rt.hostPath(p.app, strings.TrimPrefix(envValue(p.app, inject.SocketEnv), "unix://"))
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
	if err != nil {
		t.Fatalf("%s: Workload API: %v", p.pod.Name, err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// meshOpen opens one tether/1 stream (docs/sidecar.md, "The mesh hop") to
// the sidecar at addr as a peer sidecar would: mTLS with the SVID and
// bundle of src, ALPN tether/1, the server required to be server; then
// OPEN for addr's port. The connection is made inside ns (a pod's, whose
// capture rules then apply to it as to its app's). meshOpen returns "" if
// the server answered OK, or its DENY reason.
func meshOpen(ns *netns.NS, src *workloadapi.X509Source, addr netip.AddrPort, server spiffeid.ID) (string, error) {
	var raw net.Conn
	if err := ns.Do(func() (err error) {
		raw, err = net.DialTimeout("tcp", addr.String(), 2*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	conf := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(server))
	conf.MinVersion = tls.VersionTLS13
	conf.NextProtos = []string{proxy.ALPN}
	c := tls.Client(raw, conf)
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if err := c.Handshake(); err != nil {
		return "", fmt.Errorf("mTLS to %s: %w", addr, err)
	}
	// A frame is type (1 byte), payload length (4 bytes), payload; OPEN
	// (1) carries the port (2 bytes) and a name for logs.
	name := "e2e"
	frame := []byte{1, 0, 0, 0, byte(2 + len(name)), byte(addr.Port() >> 8), byte(addr.Port())}
	if _, err := c.Write(append(frame, name...)); err != nil {
		return "", fmt.Errorf("OPEN: %w", err)
	}
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return "", fmt.Errorf("answer to OPEN: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 1024 {
		return "", fmt.Errorf("answer to OPEN: frame type %d of %d bytes", hdr[0], n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c, payload); err != nil {
		return "", fmt.Errorf("answer to OPEN: %w", err)
	}
	switch hdr[0] {
	case 2: // OK
		return "", nil
	case 3: // DENY
		if len(payload) == 0 {
			return "", errors.New("DENY without a reason")
		}
		return string(payload), nil
	}
	return "", fmt.Errorf("answer to OPEN: frame type %d", hdr[0])
}

// checkDNSAnswered fails the test unless the sidecar's DNS server counted
// an A query with result (mesh: answered from discovery's name table;
// unreachable: NXDOMAIN for a mesh name the pod may not reach).
func (p *meshPod) checkDNSAnswered(result string) {
	p.m.t.Helper()
	metrics, err := get(p.m.kubelet, p.admin("/metrics"))
	if err != nil {
		p.m.t.Fatal(err)
	}
	if sample(metrics, `tether_sidecar_dns_queries_total{result="`+result+`",type="A"}`) < 1 {
		p.m.t.Fatalf("%s's sidecar answered no A query %s:\n%s", p.pod.Name, result, grep(metrics, "tether_sidecar_dns_queries_total"))
	}
}

// queryDNS asks server, from inside ns, for name's A records.
func queryDNS(t *testing.T, ns *netns.NS, server netip.AddrPort, name string) (rcode int, ips []net.IP) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	var r *dns.Msg
	if err := ns.Do(func() (err error) {
		r, _, err = (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, server.String())
		return err
	}); err != nil {
		t.Fatalf("DNS %s @%s: %v", name, server, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ips = append(ips, a.A)
		}
	}
	return r.Rcode, ips
}

// accessEntry is one line of a sidecar's access log (docs/sidecar.md).
type accessEntry struct {
	Msg           string  `json:"msg"`
	Direction     string  `json:"direction"`
	SourceID      string  `json:"source_id"`
	DestinationID string  `json:"destination_id"`
	Source        string  `json:"source"`
	Destination   string  `json:"destination"`
	Decision      string  `json:"decision"`
	Reason        string  `json:"reason"`
	Rule          string  `json:"rule"`
	DurationMS    float64 `json:"duration_ms"`
}

// accessLog parses the access log lines of the sidecar's output (its
// standard output, with its JSON log on standard error).
func (p *meshPod) accessLog() []accessEntry {
	var out []accessEntry
	sc := bufio.NewScanner(strings.NewReader(p.proc.Output()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e accessEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "connection" {
			out = append(out, e)
		}
	}
	return out
}

// logMark is the number of access log lines so far: findLog and waitLog
// look at the lines after it.
func (p *meshPod) logMark() int { return len(p.accessLog()) }

func (p *meshPod) findLog(mark int, match func(accessEntry) bool) (accessEntry, bool) {
	for _, e := range p.accessLog()[mark:] {
		if match(e) {
			return e, true
		}
	}
	return accessEntry{}, false
}

// waitLog waits for an access log line after mark that matches (a
// connection is logged when it ends).
func (p *meshPod) waitLog(mark int, what string, match func(accessEntry) bool) accessEntry {
	p.m.t.Helper()
	var e accessEntry
	poll(p.m.t, p.pod.Name+"'s access log: "+what, 5*time.Second, func() error {
		var ok bool
		if e, ok = p.findLog(mark, match); !ok {
			return fmt.Errorf("not among %+v", p.accessLog()[mark:])
		}
		return nil
	})
	return e
}
