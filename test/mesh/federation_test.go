//go:build linux

package mesh

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Two Tether meshes with different trust domains on loopback, each with
// its own tether-ca (bundle endpoint on, federating with the other through
// --federation-file), tether-discovery and sidecars.

// fedDomain is one of the federated meshes: its CA, with the bundle
// endpoint the other domain follows, and its discovery.
type fedDomain struct {
	ca *caProc
	// endpoint is the CA's bundle endpoint (https_spiffe).
	endpoint string
	// fedFile is the CA's --federation-file.
	fedFile string
	disc    *discoveryProc
}

// fedCAFlags make foreign bundles travel within seconds: a 1s refresh hint
// served, foreign endpoints fetched every 1 to 2s.
var fedCAFlags = []string{"--bundle-endpoint-refresh-hint", "1s", "--federation-min-refresh", "1s", "--federation-max-refresh", "2s"}

// startFedCA starts tether-ca for trust domain name with its bundle
// endpoint on and an empty federation file.
func startFedCA(t *testing.T, name string, extra ...string) *fedDomain {
	t.Helper()
	f := &fedDomain{endpoint: loopback(t), fedFile: filepath.Join(procDir(t), "federation.yaml")}
	if err := os.WriteFile(f.fedFile, []byte("federation: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Concat([]string{"--trust-domain", name, "--bundle-endpoint-listen", f.endpoint, "--federation-file", f.fedFile}, fedCAFlags, extra)
	f.ca = startCA(t, args...)
	return f
}

func (f *fedDomain) td() spiffeid.TrustDomain { return f.ca.td }

// federateWith makes f's CA follow other's bundle endpoint, bootstrapped
// with other's bundle file, and waits until it holds other's bundle.
func (f *fedDomain) federateWith(t *testing.T, other *fedDomain) {
	t.Helper()
	doc := fmt.Sprintf(`federation:
- trustDomain: %s
  bundleEndpointURL: https://%s
  profile: https_spiffe
  endpointSPIFFEID: spiffe://%s/tether/bundle-endpoint
  initialBundleFile: %s
`, other.td().Name(), other.endpoint, other.td().Name(), other.ca.bundle)
	tmp := f.fedFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.fedFile); err != nil {
		t.Fatal(err)
	}
	eventually(t, f.td().Name()+"'s CA to fetch "+other.td().Name()+"'s bundle from its endpoint", 20*time.Second, func() error {
		m, err := scrape(f.ca.admin)
		if err != nil {
			return err
		}
		if n := metric(m, "tether_ca_federated_bundle_refreshes_total", `trust_domain="`+other.td().Name()+`"`, `result="updated"`); n < 1 {
			return fmt.Errorf("no updated refresh yet")
		}
		return nil
	})
}

// startFederatedPair starts a.example and b.example, each federating with
// the other, without discovery yet.
func startFederatedPair(t *testing.T, caFlags ...string) (a, b *fedDomain) {
	t.Helper()
	a = startFedCA(t, "a.example", caFlags...)
	b = startFedCA(t, "b.example", caFlags...)
	a.federateWith(t, b)
	b.federateWith(t, a)
	return a, b
}

// localPair is a mesh's own api (an echo app behind a sidecar) and a
// client sidecar that calls it as the mesh service default/api:8080.
type localPair struct {
	app      *echoApp
	api, web *sidecarProc
	svc      svc
}

// startLocal starts d's discovery with the mesh service api that client
// may call, api's sidecar and client's, and makes a first call.
func (d *fedDomain) startLocal(t *testing.T, client string) *localPair {
	t.Helper()
	p := &localPair{app: startApp(t, "api@"+d.td().Name())}
	p.svc = svc{name: "api", sa: "api", ip: "10.96.0.10", port: 8080, app: p.app.addr, endpoint: loopback(t), allowFrom: []string{client}}
	d.disc = startDiscovery(t, d.ca, "trustDomain: "+d.td().Name()+"\n"+meshYAML(p.svc))
	p.api = startSidecar(t, d.ca, d.disc, sidecarSpec{sa: "api", inbound: p.svc.endpoint, app: p.app.addr})
	p.web = startSidecar(t, d.ca, d.disc, sidecarSpec{sa: client, outbound: []string{"default/api:8080"}})
	eventually(t, "a first call "+client+" → api in "+d.td().Name(), 20*time.Second, func() error { return call(p.web.outbound[0], p.app.name) })
	return p
}

// federatedRoots returns the roots the sidecar's Workload API gives its
// application for trust domain td, as go-spiffe's client reads them.
func (s *sidecarProc) federatedRoots(td spiffeid.TrustDomain) ([]string, error) {
	x, err := s.x509Context()
	if err != nil {
		return nil, err
	}
	b, ok := x.Bundles.Get(td)
	if !ok {
		var have []string
		for _, b := range x.Bundles.Bundles() {
			have = append(have, b.TrustDomain().Name())
		}
		return nil, fmt.Errorf("no bundle for %s (has %s)", td, strings.Join(have, ", "))
	}
	var fps []string
	for _, c := range b.X509Authorities() {
		fps = append(fps, fingerprint(c))
	}
	slices.Sort(fps)
	return fps, nil
}

// rootFingerprints returns the sorted fingerprints of a CA's bundle file.
func (c *caProc) rootFingerprints(t *testing.T) []string {
	t.Helper()
	var fps []string
	for _, r := range c.roots(t) {
		fps = append(fps, fingerprint(r))
	}
	slices.Sort(fps)
	return fps
}

// TestTwoMeshesFederatedBundles: two meshes, a.example and b.example, each
// following the other's bundle endpoint. Every sidecar's Workload API
// gives its application the other domain's roots (go-spiffe's client),
// and a root prepared in A reaches B's sidecars within seconds.
func TestTwoMeshesFederatedBundles(t *testing.T) {
	needMesh(t)
	t.Parallel()
	a, b := startFederatedPair(t)
	sa := a.startLocal(t, "web").web
	sb := b.startLocal(t, "web").web
	for _, c := range []struct {
		s           *sidecarProc
		own, remote *fedDomain
	}{{sa, a, b}, {sb, b, a}} {
		want := c.remote.ca.rootFingerprints(t)
		eventually(t, c.s.name+" ("+c.own.td().Name()+") to give its app "+c.remote.td().Name()+"'s roots", 20*time.Second, func() error {
			got, err := c.s.federatedRoots(c.remote.td())
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("roots %v, want %v", got, want)
			}
			return nil
		})
		own, err := c.s.federatedRoots(c.own.td())
		if err != nil || !slices.Equal(own, c.own.ca.rootFingerprints(t)) {
			t.Errorf("%s's own bundle over the Workload API: %v %v", c.s.name, own, err)
		}
	}

	// A root prepared in A is served at A's endpoint, fetched by B's CA and
	// handed to B's sidecar's application.
	if _, err := a.ca.cli("ca", "rotate", "prepare"); err != nil {
		t.Fatal(err)
	}
	var want []string
	eventually(t, "a.example's bundle file to hold two roots", 5*time.Second, func() error {
		if want = a.ca.rootFingerprints(t); len(want) != 2 {
			return fmt.Errorf("%d roots", len(want))
		}
		return nil
	})
	prepared := time.Now()
	eventually(t, "b.example's sidecar to hold a.example's prepared root", 15*time.Second, func() error {
		got, err := sb.federatedRoots(a.td())
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("roots %v, want %v", got, want)
		}
		return nil
	})
	t.Logf("a.example's prepared root reached b.example's sidecar in %s", time.Since(prepared).Round(100*time.Millisecond))
}

func mustTD(name string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(name) }
