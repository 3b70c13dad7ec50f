package sidecar

import (
	"encoding/json"
	"net/http"

	"github.com/tether-mesh/tether/internal/version"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// DenialsResponse is the body of GET /debug/denials.
type DenialsResponse struct {
	// SpiffeID is the sidecar's identity (empty before its first SVID).
	SpiffeID string `json:"spiffe_id"`
	// Capacity is how many denials the sidecar keeps; Total how many it
	// has seen since it started (Total - len(Denials) fell out).
	Capacity int    `json:"capacity"`
	Total    uint64 `json:"total"`
	// Denials are the most recent, newest first.
	Denials []proxy.Denial `json:"denials"`
}

// debugDenials serves GET /debug/denials: the most recent connections
// this sidecar's policy refused, newest first.
func (s *Sidecar) debugDenials(w http.ResponseWriter, _ *http.Request) {
	out := DenialsResponse{Capacity: s.denials.Cap()}
	out.Denials, out.Total = s.denials.List()
	if out.Denials == nil {
		out.Denials = []proxy.Denial{}
	}
	if svid, err := s.agent.GetX509SVID(); err == nil {
		out.SpiffeID = svid.ID.String()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

// adminAddr is the bound admin address the sidecar reports to discovery,
// for tether status to find /debug/denials (an unspecified host stands
// for the address the sidecar connects from).
func (s *Sidecar) adminAddr() string {
	if a := s.Addr("admin"); a != nil {
		return a.String()
	}
	return ""
}

// buildVersion is the sidecar's build as it reports it to discovery
// (internal/version).
func buildVersion() string { return version.String() }
