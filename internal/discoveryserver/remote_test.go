package discoveryserver

import (
	"path/filepath"
	"slices"
	"testing"
)

// remoteMeshYAML: web may call b.example's pay (a RemoteService); a
// RemoteService named api (a Service's name) is refused.
const remoteMeshYAML = `defaultPolicy: deny
services:
  - name: web
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{address: 127.0.0.1, serviceAccount: web}]
  - name: api
    clusterIPs: [10.96.0.20]
    ports: [{port: 80}]
    endpoints: [{address: 127.0.0.2, serviceAccount: api}]
remoteServices:
  - name: pay
    trustDomain: b.example
    addresses: [10.200.0.7]
    ports: [{port: 443}]
    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/ns/pay/sa/api}]
  - name: api
    trustDomain: b.example
    ports: [{port: 80}]
    endpoints: [{address: 192.0.2.11, port: 15006, identity: spiffe://b.example/ns/shop/sa/api}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: pay-from-web, namespace: default}
    spec:
      destination: {service: pay}
      sources: [{serviceAccount: {name: web}}]
`

// TestFileModeRemoteService: over discovery's real mTLS xDS, web gets a
// cluster for the remote service that accepts only the declared foreign
// identity, at its declared endpoint, and its name at the virtual
// address; api (not named by the policy) gets neither. The refused
// RemoteService is counted.
func TestFileModeRemoteService(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, remoteMeshYAML)
	s := start(t, baseConfig(t, ca, mesh))

	wv := connect(t, s, ca, webID).subscribe()
	if got := wv.clusters(t); !slices.Equal(got, []string{"default/pay"}) {
		t.Fatalf("web's clusters = %v, want default/pay", got)
	}
	if got := wv.sans(t, "default/pay"); !slices.Equal(got, []string{"spiffe://b.example/ns/pay/sa/api"}) {
		t.Errorf("default/pay accepts servers %v, want only the declared b.example identity", got)
	}
	if got := wv.endpoints(t, "default/pay"); !slices.Equal(got, []string{"192.0.2.10:15006"}) {
		t.Errorf("default/pay endpoints = %v", got)
	}
	nt := wv.names(t)
	if len(nt.Services) != 1 || nt.Services[0].Fqdn != "pay.default.svc.cluster.local." || !slices.Equal(nt.Services[0].Addresses, []string{"10.200.0.7"}) {
		t.Errorf("web's name table: %v", nt.Services)
	}

	av := connect(t, s, ca, apiID).subscribe()
	if got := av.clusters(t); len(got) != 0 {
		t.Errorf("api's clusters = %v, want none", got)
	}
	if !slices.Contains(av.names(t).UnreachableAddresses, "10.200.0.7") {
		t.Errorf("api's name table does not hide pay's address: %v", av.names(t).UnreachableAddresses)
	}
	for series, want := range map[string]float64{
		"tether_discovery_registry_services":                3,
		"tether_discovery_registry_remote_services":         1,
		"tether_discovery_registry_remote_services_refused": 1,
		"tether_discovery_registry_reload_errors_total":     0,
	} {
		if got := s.metric(t, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}
