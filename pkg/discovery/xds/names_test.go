package xds_test

import (
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

func nameTEC(t *testing.T, name string, m proto.Message) *corev3.TypedExtensionConfig {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TypedExtensionConfig{Name: name, TypedConfig: a}
}

// The errors of MergeNameTables, the first in the order of the items;
// a second globals entry is reported as sent twice before its contents
// are looked at.
func TestMergeNameTablesErrors(t *testing.T) {
	id := hex.EncodeToString(xds.HiddenID(discovery.ServiceKey{Namespace: "ns", Name: "a"}))
	globals := nameTEC(t, wire.NameGlobalsName, &discoveryv1.NameTable{ClusterDomain: "cluster.local", InboundDefault: "deny"})
	svc := func(name string, sns ...*discoveryv1.ServiceName) *corev3.TypedExtensionConfig {
		return nameTEC(t, wire.NameServicePrefix+name, &discoveryv1.NameTable{Services: sns})
	}
	web := &discoveryv1.ServiceName{Namespace: "shop", Name: "web"}
	api := &discoveryv1.ServiceName{Namespace: "shop", Name: "api"}
	hidden := func(name string, nt *discoveryv1.NameTable) *corev3.TypedExtensionConfig {
		return nameTEC(t, wire.NameHiddenPrefix+name, nt)
	}
	withServices := nameTEC(t, wire.NameGlobalsName, &discoveryv1.NameTable{ClusterDomain: "cluster.local", Services: []*discoveryv1.ServiceName{web}})
	whole := nameTEC(t, wire.NameTableName, &discoveryv1.NameTable{ClusterDomain: "cluster.local"})
	tests := []struct {
		name  string
		items []types.Resource
		want  string // the error, or its start if it ends in ": "
	}{
		{"not an extension config", []types.Resource{globals, &clusterv3.Cluster{}},
			"extension config 1 is a *clusterv3.Cluster, want a TypedExtensionConfig"},
		{"no typed_config", []types.Resource{globals, &corev3.TypedExtensionConfig{Name: wire.NameServicePrefix + "shop/web"}},
			`extension config "tether.names/svc/shop/web" has no typed_config`},
		{"another message", []types.Resource{nameTEC(t, wire.NameGlobalsName, &clusterv3.Cluster{})},
			`extension config "tether.names/global": `}, // and protobuf's error, whose text varies
		{"globals twice", []types.Resource{globals, globals}, `extension config "tether.names/global" is sent twice`},
		{"globals twice, the second with services", []types.Resource{globals, withServices}, `extension config "tether.names/global" is sent twice`},
		{"globals with services", []types.Resource{withServices}, `extension config "tether.names/global" holds services or addresses`},
		{"globals twice before a bad entry", []types.Resource{globals, globals, svc("shop/web")},
			`extension config "tether.names/global" is sent twice`},
		{"two services in an entry", []types.Resource{globals, svc("shop/web", web, api)},
			`extension config "tether.names/svc/shop/web" does not hold exactly one service`},
		{"another service's entry", []types.Resource{globals, svc("shop/web", api)},
			`extension config "tether.names/svc/shop/web" holds service shop/api`},
		{"hidden entry with a service", []types.Resource{globals, hidden(id, &discoveryv1.NameTable{Services: []*discoveryv1.ServiceName{web}})},
			`extension config "tether.names/hidden/` + id + `" holds more than addresses`},
		{"hidden entry with a short id", []types.Resource{globals, hidden("00", &discoveryv1.NameTable{UnreachableAddresses: []string{"10.0.0.1"}})},
			`extension config "tether.names/hidden/00": want 16 bytes of hex after "tether.names/hidden/"`},
		{"hidden entry with a name for an id", []types.Resource{globals, hidden("a.ns.svc.cluster.local.", &discoveryv1.NameTable{})},
			`extension config "tether.names/hidden/a.ns.svc.cluster.local.": want 16 bytes of hex after "tether.names/hidden/"`},
		{"the old hash entry", []types.Resource{globals, nameTEC(t, "tether.names/hash/00", &discoveryv1.NameTable{})},
			`extension config "tether.names/hash/00": unknown name-table entry`},
		{"unknown entry", []types.Resource{globals, nameTEC(t, "tether.names/other", &discoveryv1.NameTable{})},
			`extension config "tether.names/other": unknown name-table entry`},
		{"whole twice", []types.Resource{whole, whole}, `extension config "tether.names" is sent twice`},
		{"whole with split entries", []types.Resource{whole, globals}, `extension config "tether.names" is sent with split name-table entries`},
		{"no globals", []types.Resource{svc("shop/web", web)}, `no name table (extension config "tether.names/global")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nt, err := wire.MergeNameTables(tt.items)
			if err == nil || err.Error() != tt.want && !(strings.HasSuffix(tt.want, ": ") && strings.HasPrefix(err.Error(), tt.want)) {
				t.Errorf("MergeNameTables = %v, %v; want error %q", nt, err, tt.want)
			}
		})
	}
}

// MergeNameTableEntries merges what its parse gives, which it calls once
// for each name-table entry and for nothing else.
func TestMergeNameTableEntries(t *testing.T) {
	h := xds.HiddenID(discovery.ServiceKey{Namespace: "ns", Name: "a"})
	items := []types.Resource{
		nameTEC(t, wire.NameGlobalsName, &discoveryv1.NameTable{ClusterDomain: "cluster.local", InboundDefault: "deny"}),
		nameTEC(t, wire.NameHiddenPrefix+hex.EncodeToString(h), &discoveryv1.NameTable{UnreachableAddresses: []string{"fd00::1", "10.0.0.1"}}),
		nameTEC(t, wire.NameServicePrefix+"shop/web", &discoveryv1.NameTable{Services: []*discoveryv1.ServiceName{{Namespace: "shop", Name: "web"}}}),
		nameTEC(t, wire.NameServicePrefix+"a-b/c", &discoveryv1.NameTable{Services: []*discoveryv1.ServiceName{{Namespace: "a-b", Name: "c"}}}),
		nameTEC(t, "some.other.config", &clusterv3.Cluster{}),
	}
	parsed := map[string]int{}
	got, err := wire.MergeNameTableEntries(items, func(tec *corev3.TypedExtensionConfig) (wire.NameTableEntry, error) {
		parsed[tec.GetName()]++
		return wire.ParseNameTableEntry(tec)
	})
	if err != nil {
		t.Fatal(err)
	}
	want, err := wire.MergeNameTables(items)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("MergeNameTableEntries = %v, MergeNameTables = %v", got, want)
	}
	if len(got.Services) != 2 || got.Services[0].Namespace != "a-b" || !slices.Equal(got.UnreachableAddresses, []string{"10.0.0.1", "fd00::1"}) {
		t.Errorf("merged %v, want services a-b/c and shop/web, and the hidden addresses sorted", got)
	}
	if len(parsed) != 4 || parsed["some.other.config"] != 0 {
		t.Errorf("parsed %v, want each of the four name-table entries once", parsed)
	}
	for name, n := range parsed {
		if n != 1 {
			t.Errorf("parsed %q %d times", name, n)
		}
	}
}
