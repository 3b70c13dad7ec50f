package main

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// The xDS types a client subscribes to.
const (
	typeCDS  = resource.ClusterType
	typeEDS  = resource.EndpointType
	typeLDS  = resource.ListenerType
	typeECDS = resource.ExtensionConfigType
)

var allTypes = []string{typeCDS, typeEDS, typeLDS, typeECDS}

// shortType names a type URL in tables.
func shortType(t string) string {
	switch t {
	case typeCDS:
		return "CDS"
	case typeEDS:
		return "EDS"
	case typeLDS:
		return "LDS"
	case typeECDS:
		return "ECDS"
	}
	return t
}

// nameTableOf merges the name-table entries among items.
func nameTableOf(items []types.Resource) (*discoveryv1.NameTable, bool) {
	nt, err := wire.MergeNameTables(items)
	return nt, err == nil
}

func protoSize(m proto.Message) int { return proto.Size(m) }

// hiddenOf is what a name table holds for service i when it is
// unreachable, besides an id keyed by the serving process: its first
// address (a ClusterIP, or a headless service's endpoint).
func hiddenOf(i int, m *mesh) []byte {
	s := m.state.Services[i]
	if len(s.ClusterIPs) > 0 {
		return []byte(s.ClusterIPs[0].String())
	}
	return []byte(s.Endpoints[0].Addr.String())
}

func protoEqual(a, b types.Resource) bool { return proto.Equal(a, b) }
