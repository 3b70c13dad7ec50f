//go:build linux

package mesh

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
)

// The cross-domain call across two API servers. A RemoteService endpoint
// must be a unicast address a pod reaches (the CRD refuses loopback), so
// the callers run in a network namespace the test creates (their pod
// network), where that address is an L4 relay to the other mesh's sidecar
// on the host's loopback: what a pass-through load balancer in front of
// it does. The relays also carry the callers' connections to their CA
// and discovery.

// relayFromNS forwards every connection to listen inside ns to target in
// the test's own network namespace, bytes untouched.
func relayFromNS(t *testing.T, ns *netns.NS, listen, target string) {
	t.Helper()
	l, err := ns.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", listen, ns.Name(), err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { pipe(c, target) })
		}
	})
}

// pipe copies c to a new connection to target and back until both are
// done.
func pipe(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	wg.Go(func() { copyHalf(u, c) })
	wg.Go(func() { copyHalf(c, u) })
	wg.Wait()
}

// dialIn opens a TCP connection from inside ns.
func dialIn(ns *netns.NS, addr string) (c net.Conn, err error) {
	err = ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}

// callIn is call from inside ns.
func callIn(ns *netns.NS, addr, want string) error {
	c, err := dialIn(ns, addr)
	return callOn(c, err, want)
}

// refusedIn is refused from inside ns.
func refusedIn(ns *netns.NS, addr string) error {
	c, err := dialIn(ns, addr)
	return refusedOn(c, err)
}

// getIn asks path of the HTTP server at addr inside ns and returns the
// status line.
func getIn(ns *netns.NS, addr, path string) (string, error) {
	c, err := dialIn(ns, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET "+path+" HTTP/1.0\r\n\r\n")
	status, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(status), err
}

// startSidecarIn starts a sidecar of d for service account sa inside ns,
// with one outbound listener to the mesh service to; relays must carry
// its connections to d's CA and discovery.
func startSidecarIn(t *testing.T, ns *netns.NS, d *kubeDomain, sa, to string) *sidecarProc {
	t.Helper()
	dir := procDir(t)
	s := &sidecarProc{name: "sidecar " + sa + " (pod network)", sa: sa, admin: loopback(t), socket: filepath.Join(dir, "w.sock"),
		logPath: filepath.Join(dir, "sidecar-"+sa+".log"), accessLog: filepath.Join(dir, "access.log"), outbound: []string{loopback(t)}}
	s.args = []string{"--ca", d.ca.addr, "--bundle", d.ca.bundle, "--join-token", d.ca.token(t, "default", sa),
		"--admin-listen", s.admin, "--workload-socket", s.socket, "--drain-timeout", "2s", "--access-log", s.accessLog,
		"--trust-domain", d.td().Name(), "--discovery", d.disc.addr, "--outbound", s.outbound[0] + "=" + to}
	s.p = startProcWith(t, ns.StartCmd, s.name, s.logPath, "tether-sidecar", s.args...)
	dumpOnFailure(t, func() *proc { return s.p })
	eventually(t, s.name+" to be ready", 30*time.Second, func() error {
		if !s.p.alive() {
			t.Fatalf("%s exited: %v\n%s", s.name, s.p.err, s.p.output())
		}
		status, err := getIn(ns, s.admin, "/healthz/ready")
		if err == nil && !strings.Contains(status, " 200 ") {
			err = fmt.Errorf("/healthz/ready: %s", status)
		}
		return err
	})
	return s
}

// TestTwoClustersCrossDomainCall: the cross-domain call across two API
// servers. In b.example's, api is a Service with an EndpointSlice of a Pod
// of service account api, and an AccessPolicy admits
// spiffe://a.example/ns/default/sa/web. In a.example's, a RemoteService
// declares it (endpoint 10.250.0.2:15006 in the callers' pod network, an L4
// relay to api's sidecar, which must present b.example's api ID) and an
// AccessPolicy lets web and batch call it. web's call is admitted and
// b.example's api sidecar logs web's own ID; batch's is refused there, its
// ID logged, and api's app never sees it. Needs root (the pod network) and
// the kube binaries.
func TestTwoClustersCrossDomainCall(t *testing.T) {
	needMesh(t)
	t.Parallel()
	podNet := netns.New(t, "fedcallers") // skips unless root
	lb := netip.AddrPortFrom(netip.MustParseAddr("10.250.0.2"), 15006)
	podNet.AddAddr(t, "lo", netip.PrefixFrom(lb.Addr(), 32))
	a, b := startKubeDomain(t, "a.example", "remoteservices.tether.dev.yaml"), startKubeDomain(t, "b.example")
	a.federateWith(t, b)
	b.federateWith(t, a)
	a.startDiscovery(t)
	b.startDiscovery(t)

	appB := startApp(t, "api@b.example")
	_, appPort, _ := net.SplitHostPort(appB.addr)
	b.env.EnsureMeshPod(t, "default", "api", "api-1")
	webA, batchA, apiB := a.ca.id("default", "web"), a.ca.id("default", "batch"), b.ca.id("default", "api")
	b.apply(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  ports: [{name: tcp, port: 8080, targetPort: %[1]s}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1], conditions: {ready: true}, targetRef: {kind: Pod, namespace: default, name: api-1}}]
ports: [{name: tcp, port: %[1]s, protocol: TCP}]
---
apiVersion: tether.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-clients, namespace: default}
spec:
  destination: {service: api}
  sources: [{spiffeID: %[2]s}]
`, appPort, webA))
	apiInbound := loopback(t)
	api := startSidecar(t, b.ca, b.disc, sidecarSpec{sa: "api", inbound: apiInbound, app: appB.addr})
	relayFromNS(t, podNet, lb.String(), apiInbound)

	a.apply(t, fmt.Sprintf(`apiVersion: tether.dev/v1alpha1
kind: RemoteService
metadata: {name: api-b, namespace: default}
spec:
  trustDomain: b.example
  ports: [{name: tcp, port: 8080, targetPort: %s}]
  endpoints: [{address: %s, port: %d, identity: %s}]
---
apiVersion: tether.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-b-clients, namespace: default}
spec:
  destination: {service: api-b}
  sources: [{serviceAccount: {name: web}}, {serviceAccount: {name: batch}}]
`, appPort, lb.Addr(), lb.Port(), apiB))
	relayFromNS(t, podNet, a.ca.addr, a.ca.addr)
	relayFromNS(t, podNet, a.disc.addr, a.disc.addr)
	web := startSidecarIn(t, podNet, a, "web", "default/api-b:8080")
	batch := startSidecarIn(t, podNet, a, "batch", "default/api-b:8080")

	eventually(t, "a.example's web → b.example's api across the two clusters", 30*time.Second, func() error {
		return callIn(podNet, web.outbound[0], appB.name)
	})
	if in := inboundFrom(t, api, "allow", webA); in.DestinationID != apiB.String() {
		t.Errorf("b.example's api sidecar logged its own ID as %q", in.DestinationID)
	}
	accepted := appB.accepted.Load()
	if err := refusedIn(podNet, batch.outbound[0]); err != nil {
		t.Fatalf("a.example's batch → b.example's api: %v", err)
	}
	inboundFrom(t, api, "deny", batchA)
	if n := appB.accepted.Load(); n != accepted {
		t.Errorf("b.example's api app accepted %d connections of refused callers", n-accepted)
	}
}
