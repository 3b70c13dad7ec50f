package demo

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// tether demo --federation: two meshes with their own trust domains on
// loopback, each with its own tether-ca, tether-discovery and sidecars;
// the CAs follow each other's SPIFFE bundle endpoint. a.example's web and
// batch call b.example's api as a remote service; b.example's policy
// admits a.example's web only.

// The two trust domains of tether demo --federation.
const (
	fedDomainA = "a.example"
	fedDomainB = "b.example"
)

// fedPortLayout places the listeners of tether demo --federation at
// base+offset: a.example's control plane and clients from N, b.example's
// from N+20.
var fedPortLayout = []demoPort{
	{"a-ca", "a.example's tether-ca gRPC API", 0},
	{"a-ca-admin", "a.example's tether-ca metrics", 1},
	{"a-bundle", "a.example's bundle endpoint", 2},
	{"a-discovery", "a.example's tether-discovery xDS port", 3},
	{"a-discovery-admin", "a.example's tether-discovery metrics", 4},
	{"web-app", "a.example's web app", 10},
	{"web-admin", "web's sidecar admin port", 11},
	{"web-to-api", "web's sidecar outbound to b.example's api", 12},
	{"batch-app", "a.example's batch app", 15},
	{"batch-admin", "batch's sidecar admin port", 16},
	{"batch-to-api", "batch's sidecar outbound to b.example's api", 17},
	{"b-ca", "b.example's tether-ca gRPC API", 20},
	{"b-ca-admin", "b.example's tether-ca metrics", 21},
	{"b-bundle", "b.example's bundle endpoint", 22},
	{"b-discovery", "b.example's tether-discovery xDS port", 23},
	{"b-discovery-admin", "b.example's tether-discovery metrics", 24},
	{"api-app", "b.example's api app", 30},
	{"api-inbound", "api's sidecar inbound", 31},
	{"api-admin", "api's sidecar admin port", 32},
}

// fedMesh is one of the two meshes: its trust domain, files and control
// plane.
type fedMesh struct {
	td, key                       string // "a.example", "a" (its ports' prefix)
	dir, caDir, meshFile, fedFile string
	admin                         cav1.AdminClient
	closeAdmin                    func()
}

func (m *fedMesh) id(sa string) string {
	return "spiffe://" + m.td + "/ns/" + demoNamespace + "/sa/" + sa
}
func (m *fedMesh) bundle() string { return filepath.Join(m.caDir, "bundle.pem") }
func (m *fedMesh) socket() string { return filepath.Join(m.caDir, "admin.sock") }
func (m *fedMesh) discoveryID() string {
	return "spiffe://" + m.td + "/ns/tether-system/sa/tether-discovery"
}
func (m *fedMesh) endpointID() string { return "spiffe://" + m.td + "/tether/bundle-endpoint" }

// fedService is an app behind its sidecar in one of the meshes: api
// serves (inbound), web and batch call api (outbound).
type fedService struct {
	name              string
	mesh              *fedMesh
	app, admin        string
	inbound, out      string // api: its inbound listener; web, batch: the outbound listener to api
	socket, accessLog string
	appProc, sidecar  *proc
}

func (s *fedService) id() string { return s.mesh.id(s.name) }

// fedDemo is a run of tether demo --federation, on the process machinery
// of demo.
type fedDemo struct {
	*demo
	a, b            *fedMesh
	web, batch, api *fedService
	traffic         *fedTraffic
}

// plan lays out the directories, the services and both mesh files.
func (f *fedDemo) plan() error {
	d := f.demo
	if err := d.makeDirs(); err != nil {
		return err
	}
	mesh := func(td, key string) *fedMesh {
		dir := filepath.Join(d.dir, key)
		return &fedMesh{td: td, key: key, dir: dir, caDir: filepath.Join(dir, "ca"),
			meshFile: filepath.Join(dir, "mesh.yaml"), fedFile: filepath.Join(dir, "federation.yaml")}
	}
	f.a, f.b = mesh(fedDomainA, "a"), mesh(fedDomainB, "b")
	p := d.ports
	svc := func(name string, m *fedMesh) *fedService {
		return &fedService{name: name, mesh: m, app: p[name+"-app"], admin: p[name+"-admin"],
			socket:    filepath.Join(m.dir, name, "workload.sock"),
			accessLog: filepath.Join(d.logDir, m.key+"-"+name+"-sidecar.access.log")}
	}
	f.web, f.batch, f.api = svc("web", f.a), svc("batch", f.a), svc("api", f.b)
	f.web.out, f.batch.out, f.api.inbound = p["web-to-api"], p["batch-to-api"], p["api-inbound"]
	for _, s := range f.services() {
		if err := os.MkdirAll(filepath.Dir(s.socket), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(s.socket), err)
		}
		if len(s.socket) > 100 {
			return fmt.Errorf("the Workload API socket path %s is too long for a unix socket: give a shorter --dir", s.socket)
		}
	}
	for _, w := range []struct{ path, body string }{
		{f.a.meshFile, f.meshA()}, {f.b.meshFile, f.meshB()},
		// Each CA starts federating with nobody: b.example's file is
		// written once a.example's CA has its bundle, and the other way.
		{f.a.fedFile, "federation: []\n"}, {f.b.fedFile, "federation: []\n"},
	} {
		if err := os.WriteFile(w.path, []byte(w.body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// services are the three apps, in start order.
func (f *fedDemo) services() []*fedService { return []*fedService{f.api, f.web, f.batch} }

// meshA is a.example's registry: api, a remote service of b.example
// (called over tether/1 at api's sidecar, which must present b.example's
// api identity), and a policy letting web and batch call it.
func (f *fedDemo) meshA() string {
	ih, ip, _ := net.SplitHostPort(f.api.inbound)
	_, ap, _ := net.SplitHostPort(f.api.app)
	return fmt.Sprintf(`# Generated by tether demo --federation: a.example's registry.
trustDomain: %s
defaultPolicy: deny    # what no AccessPolicy allows is denied
remoteServices:
  # b.example's api, called over tether/1 straight at its sidecar, which
  # must present b.example's api identity; web keeps its own identity.
  - name: api
    namespace: %s
    trustDomain: %s
    ports: [{port: 80, targetPort: %s}]
    endpoints: [{address: %s, port: %s, identity: %s}]
policies:
  # a.example lets web and batch call out to api; b.example decides whom
  # it admits.
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-web-and-batch, namespace: %s}
    spec:
      destination: {service: api}
      sources: [{serviceAccount: {name: web}}, {serviceAccount: {name: batch}}]
`, fedDomainA, demoNamespace, fedDomainB, ap, ih, ip, f.b.id("api"), demoNamespace)
}

// meshB is b.example's registry: api, and the policy that admits
// a.example's web by its SPIFFE ID (and nobody else).
func (f *fedDemo) meshB() string {
	ih, ip, _ := net.SplitHostPort(f.api.inbound)
	_, ap, _ := net.SplitHostPort(f.api.app)
	return fmt.Sprintf(`# Generated by tether demo --federation: b.example's registry.
trustDomain: %s
defaultPolicy: deny    # what no AccessPolicy allows is denied
services:
  - name: api
    ports: [{port: 80, targetPort: %s}]
    endpoints: [{address: %s, port: %s, serviceAccount: api}]
policies:
  # A caller of another trust domain is let in only where a policy names
  # it: here a.example's web, by its SPIFFE ID.
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-a-web, namespace: %s}
    spec:
      destination: {service: api}
      sources: [{spiffeID: %s}]
`, fedDomainB, ap, ih, ip, demoNamespace, f.a.id("web"))
}

// federationFile is what m's CA is told about other: its bundle
// endpoint, the SPIFFE ID the endpoint presents and, for the first fetch,
// other's bundle file.
func federationFile(other *fedMesh, endpoint string) string {
	return fmt.Sprintf(`# Generated by tether demo --federation.
federation:
  - trustDomain: %s
    bundleEndpointURL: https://%s
    profile: https_spiffe
    endpointSPIFFEID: %s
    initialBundleFile: %s
`, other.td, endpoint, other.endpointID(), other.bundle())
}

// writeAtomic replaces path's content with one rename, so a reader never
// sees half of it.
func writeAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
