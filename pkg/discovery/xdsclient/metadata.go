package xdsclient

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// DefaultMetadataRefresh is how often a session checks whether its node
// metadata changed (the SVID was renewed) by default.
const DefaultMetadataRefresh = 30 * time.Second

// node is the Node a session sends: node.id, and node.metadata with the
// admin address, the version and the current SVID's expiry.
func (c *Client) node() *corev3.Node {
	md := wire.NodeMetadata{AdminAddr: c.cfg.AdminAddr, Version: c.cfg.Version}
	if svid, err := c.cfg.SVIDs.GetX509SVID(); err == nil && svid != nil && len(svid.Certificates) > 0 {
		md.SVIDExpiry = svid.Certificates[0].NotAfter
	}
	return &corev3.Node{Id: c.cfg.ID.String(), UserAgentName: "tether-sidecar", Metadata: md.Struct()}
}

// refreshMetadata tells discovery the new metadata when it changed (an SVID
// renewal changes svid_expiry): the next request carries it, and if the
// stream is idle it re-sends its last ACK of one type, which the server
// takes as "nothing new" but which delivers the node.
func (s *session) refreshMetadata() error {
	n := s.c.node()
	if proto.Equal(n.GetMetadata(), s.node.GetMetadata()) {
		return nil
	}
	s.node = n
	if !s.connected {
		return nil
	}
	for _, typ := range []resource.Type{resource.ListenerType, resource.ClusterType, resource.ExtensionConfigType} {
		// Only a type whose last response was accepted: re-sending its
		// ACK asks for nothing new.
		if st := s.types[typ]; st.received && st.nackedVersion == "" && s.pending[typ] == nil {
			return s.send(typ, nil)
		}
	}
	return nil
}
