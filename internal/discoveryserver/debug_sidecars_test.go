package discoveryserver

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// TestDebugSidecars: GET /debug/sidecars lists the connected sidecars with
// their verified ID, peer, and the metadata they sent, checked.
func TestDebugSidecars(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	s := start(t, baseConfig(t, ca, mesh))

	sidecars := func() SidecarsResponse {
		t.Helper()
		code, body := s.get(t, "/debug/sidecars")
		if code != http.StatusOK {
			t.Fatalf("/debug/sidecars = %d: %s", code, body)
		}
		var out SidecarsResponse
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("%v:\n%s", err, body)
		}
		return out
	}
	if got := sidecars(); len(got.Sidecars) != 0 || got.Time.IsZero() {
		t.Errorf("before any sidecar: %+v", got)
	}

	expiry := time.Now().Add(42 * time.Minute).UTC().Truncate(time.Second)
	web := connect(t, s, ca, webID)
	web.node.Metadata = wire.NodeMetadata{AdminAddr: ":15020", SVIDExpiry: expiry, Version: "v1.0.0"}.Struct()
	web.subscribe()
	api := connect(t, s, ca, apiID)
	api.node.Metadata = wire.NodeMetadata{AdminAddr: "192.0.2.77:15020"}.Struct()
	api.send(resource.ClusterType, nil, nil)
	api.recv(5 * time.Second)

	var got SidecarsResponse
	testutil.Eventually(t, "both sidecars listed", 10*time.Second, func() bool { got = sidecars(); return len(got.Sidecars) == 2 })
	a, w := got.Sidecars[0], got.Sidecars[1] // by SPIFFE ID
	if w.ID != webID.String() || w.Metadata != (wire.NodeMetadata{AdminAddr: "127.0.0.1:15020", SVIDExpiry: expiry, Version: "v1.0.0"}) ||
		w.MetadataError != "" || !strings.HasPrefix(w.Peer, "127.0.0.1:") || w.ConnectionSVIDExpiry.IsZero() {
		t.Errorf("web: %+v", w)
	}
	if a.ID != apiID.String() || a.Metadata.AdminAddr != "" || !strings.Contains(a.MetadataError, "192.0.2.77 is not the address the sidecar connected from") {
		t.Errorf("api, which claimed another host's admin address: %+v", a)
	}
}
