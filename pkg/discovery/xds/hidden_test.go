package xds_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// The attack of issue 11 item 9: a workload holds its SVID (the Workload
// API hands it over), so it can open its own ADS stream and read the name
// table discovery sends its sidecar. Nothing in it may let the workload
// confirm a guessed name of a service it may not reach offline: not the
// name, not a hash of it anyone can compute. What it does get of such a
// service is an id keyed with discovery's secret and its addresses, which
// is what the sidecar's DNS server needs to refuse upstream answers.
func TestHiddenNamesCannotBeGuessedOffline(t *testing.T) {
	m := newMesh(t) // web may reach api; not db, not itself
	c := m.connectDelta(webID)
	typeURLs := []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.ExtensionConfigType}
	for _, typ := range typeURLs {
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ})
	}
	var sent [][]byte // everything web's stream carried, as sent
	var ecs []types.Resource
	for range typeURLs {
		r := c.recv(5 * time.Second)
		if r == nil {
			t.Fatal("web: timed out subscribing")
		}
		for _, res := range r.Resources {
			sent = append(sent, []byte(res.Name), res.Resource.GetValue())
			if r.TypeUrl == resource.ExtensionConfigType {
				tec := new(corev3.TypedExtensionConfig)
				if err := res.Resource.UnmarshalTo(tec); err != nil {
					t.Fatal(err)
				}
				ecs = append(ecs, tec)
			}
		}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	all := bytes.Join(sent, nil)

	// What an attacker would test a guess against, for the hidden service
	// db, in every form we know of. (web is hidden from itself too, but
	// its own inbound listener names it.)
	for _, key := range []discovery.ServiceKey{{Namespace: "default", Name: "db"}} {
		fqdn := wire.FQDN(key, wire.DefaultClusterDomain)
		var guesses [][]byte
		for _, s := range []string{fqdn, strings.TrimSuffix(fqdn, "."), key.String(), key.Namespace + "/" + key.Name} {
			h := sha256.Sum256([]byte(s))
			guesses = append(guesses, []byte(s), h[:], h[:16], []byte(hex.EncodeToString(h[:])), []byte(hex.EncodeToString(h[:16])))
		}
		for _, g := range guesses {
			if bytes.Contains(all, g) {
				t.Errorf("web's own ADS stream carries %q (a form of hidden %s): a guess is confirmed offline", g, key)
			}
		}
	}

	nt, err := wire.MergeNameTables(ecs)
	if err != nil {
		t.Fatal(err)
	}
	if len(nt.Services) != 1 || nt.Services[0].Name != "api" {
		t.Errorf("services %v, want only api", nt.Services)
	}
	// db (headless, 10.0.0.4) and web (headless, 10.0.0.1) are hidden by
	// address, so the sidecar can still refuse their names.
	if want := []string{"10.0.0.1", "10.0.0.4"}; !slices.Equal(nt.UnreachableAddresses, want) {
		t.Errorf("unreachable addresses %q, want %q", nt.UnreachableAddresses, want)
	}
	var hidden []string
	for _, r := range ecs {
		if n := r.(*corev3.TypedExtensionConfig).Name; strings.HasPrefix(n, wire.NameHiddenPrefix) {
			hidden = append(hidden, n)
		}
	}
	if len(hidden) != 2 {
		t.Errorf("hidden entries %q, want one for each of db and web", hidden)
	}
}
