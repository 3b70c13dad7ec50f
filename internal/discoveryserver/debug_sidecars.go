package discoveryserver

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// SidecarsResponse is the body of GET /debug/sidecars.
type SidecarsResponse struct {
	// Time is when the list was taken.
	Time time.Time `json:"time"`
	// Sidecars are the open ADS streams of this replica, one per stream,
	// with what each sidecar reported about itself (checked, not
	// trusted: only the SPIFFE ID is verified).
	Sidecars []xds.NodeInfo `json:"sidecars"`
}

// debugSidecars serves GET /debug/sidecars: the sidecars connected to this
// replica, for tether status.
func (s *Server) debugSidecars(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(SidecarsResponse{Time: time.Now().UTC(), Sidecars: s.xds.Nodes()})
}
