package xds_test

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// validateDeep runs ValidateAll (the protoc-gen-validate rules a stock
// Envoy enforces when it accepts a resource) on m and on every message
// packed in an Any inside it, at any depth: Envoy validates typed_config
// too, and ValidateAll alone does not look inside an Any.
func validateDeep(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	var errs []string
	var walk func(protoreflect.Message)
	walk = func(pm protoreflect.Message) {
		if a, ok := pm.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Sprintf("Any %s: %v", a.GetTypeUrl(), err))
				return
			}
			if err := validateDeep(inner); err != nil {
				errs = append(errs, err.Error())
			}
			return
		}
		pm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// checkEnvoySemantics checks what a stock Envoy needs of one node's
// resources beyond their schema: every Cluster is EDS over ADS with a
// ClusterLoadAssignment of the same name and the reverse; every
// name-table service has its Cluster; the inbound Listener restores the
// original destination (envoy.filters.listener.original_dst) before
// matching filter chains on destination_port, every chain ends in a
// tcp_proxy to local|<that port> after its RBAC filters, and no two
// chains have the same match.
func checkEnvoySemantics(res map[resource.Type][]types.Resource) error {
	clusters := map[string]bool{}
	for _, r := range res[resource.ClusterType] {
		c := r.(*clusterv3.Cluster)
		if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
			return fmt.Errorf("cluster %q: not EDS over ADS", c.GetName())
		}
		if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" && sn != c.GetName() {
			return fmt.Errorf("cluster %q: EDS service_name %q", c.GetName(), sn)
		}
		if clusters[c.GetName()] {
			return fmt.Errorf("cluster %q sent twice", c.GetName())
		}
		clusters[c.GetName()] = true
	}
	clas := map[string]bool{}
	for _, r := range res[resource.EndpointType] {
		name := r.(*endpointv3.ClusterLoadAssignment).GetClusterName()
		if !clusters[name] {
			return fmt.Errorf("ClusterLoadAssignment %q has no Cluster", name)
		}
		clas[name] = true
	}
	for name := range clusters {
		if !clas[name] {
			return fmt.Errorf("cluster %q has no ClusterLoadAssignment: Envoy would wait for it", name)
		}
	}
	nt, err := wire.MergeNameTables(res[resource.ExtensionConfigType])
	if err != nil {
		return err
	}
	for _, s := range nt.GetServices() {
		if !clusters[s.GetNamespace()+"/"+s.GetName()] {
			return fmt.Errorf("name table lists %s/%s without a Cluster", s.GetNamespace(), s.GetName())
		}
	}
	if len(nt.GetServices()) != len(clusters) {
		return fmt.Errorf("%d clusters, %d reachable services in the name table", len(clusters), len(nt.GetServices()))
	}
	addrs := map[string]string{}
	for _, r := range res[resource.ListenerType] {
		l := r.(*listenerv3.Listener)
		a := l.GetAddress().GetSocketAddress()
		key := a.GetAddress() + ":" + strconv.Itoa(int(a.GetPortValue()))
		if other, dup := addrs[key]; dup {
			return fmt.Errorf("listeners %q and %q both bind %s: Envoy refuses the second", other, l.GetName(), key)
		}
		addrs[key] = l.GetName()
		if len(l.GetFilterChains()) == 0 {
			continue
		}
		found := false
		for _, lf := range l.GetListenerFilters() {
			found = found || (lf.GetName() == wellknown.OriginalDestination && lf.GetTypedConfig() != nil)
		}
		if !found {
			return fmt.Errorf("listener %q matches on destination_port but has no %s listener filter: "+
				"Envoy would match the port it accepted on (%d), not the captured one", l.GetName(), wellknown.OriginalDestination, a.GetPortValue())
		}
		matches := map[string]string{}
		for _, fc := range l.GetFilterChains() {
			m := fc.GetFilterChainMatch()
			port := m.GetDestinationPort().GetValue()
			if port == 0 {
				return fmt.Errorf("listener %q chain %q: no destination_port", l.GetName(), fc.GetName())
			}
			mk := prototext.Format(m)
			if other, dup := matches[mk]; dup {
				return fmt.Errorf("listener %q: chains %q and %q have the same match: Envoy refuses the listener", l.GetName(), other, fc.GetName())
			}
			matches[mk] = fc.GetName()
			fs := fc.GetFilters()
			if len(fs) < 2 || fs[len(fs)-1].GetName() != wellknown.TCPProxy {
				return fmt.Errorf("listener %q chain %q: want RBAC filters then %s", l.GetName(), fc.GetName(), wellknown.TCPProxy)
			}
			for _, f := range fs[:len(fs)-1] {
				if f.GetName() != wellknown.RoleBasedAccessControl {
					return fmt.Errorf("listener %q chain %q: filter %q before tcp_proxy, want only RBAC", l.GetName(), fc.GetName(), f.GetName())
				}
			}
			var tp tcpproxyv3.TcpProxy
			if err := fs[len(fs)-1].GetTypedConfig().UnmarshalTo(&tp); err != nil {
				return err
			}
			if want := wire.LocalClusterPrefix + strconv.Itoa(int(port)); tp.GetCluster() != want {
				return fmt.Errorf("listener %q chain %q: tcp_proxy to %q, want %q", l.GetName(), fc.GetName(), tp.GetCluster(), want)
			}
			if fc.GetTransportSocket().GetName() != wellknown.TransportSocketTLS {
				return fmt.Errorf("listener %q chain %q: no TLS transport socket", l.GetName(), fc.GetName())
			}
		}
	}
	return nil
}

// Issue 11 item 14: every resource discovery sends passes ValidateAll (in
// depth, typed configs included) and fits together as a stock Envoy
// needs, for every identity of random meshes; half of them with policies
// and defaults in audit mode, whose RBAC shadow_rules are checked too.
func TestResourcesAreWhatEnvoyWouldRun(t *testing.T) {
	shadows := 0
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 14))
		def := []policy.Default{policy.AllowMesh, policy.SameNamespace, policy.Deny}[seed%3]
		st := discoverytest.RandomState(r, testutil.TrustDomain)
		var opts []discovery.RegistryOption
		if seed%2 == 1 { // audit modes: RBAC shadow_rules
			discoverytest.RandomModes(r, &st)
			opts = append(opts, discovery.WithMeshDefaultMode([]policy.Mode{policy.Enforce, policy.Audit}[seed/2%2]))
		}
		snap := discoverytest.Snapshot(t, testutil.TrustDomain, def, st, opts...)
		ids := append(snap.Sources(), spiffeid.RequireFromPath(testutil.TrustDomain, "/ns/nobody/sa/nobody"))
		for _, id := range ids {
			res, err := xds.BuildResources(snap, id, "")
			if err != nil {
				t.Fatal(err)
			}
			for typ, items := range res {
				for _, m := range items {
					if err := validateDeep(m); err != nil {
						t.Fatalf("seed %d %s %s %s: %v", seed, id, typ, types.Resource(m), err)
					}
				}
			}
			if err := checkEnvoySemantics(res); err != nil {
				t.Fatalf("seed %d %s: %v", seed, id, err)
			}
			shadows += shadowRules(t, res)
		}
	}
	if shadows == 0 {
		t.Fatal("no RBAC filter has shadow rules: the audit-mode meshes do not exercise them")
	}
	t.Logf("%d RBAC filters with shadow rules validated", shadows)
}

// shadowRules counts the RBAC filters of res's listeners with shadow rules.
func shadowRules(t *testing.T, res map[resource.Type][]types.Resource) int {
	n := 0
	for _, r := range res[resource.ListenerType] {
		for _, fc := range r.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var rb rbacfilterv3.RBAC
				if f.GetName() == wellknown.RoleBasedAccessControl && f.GetTypedConfig().UnmarshalTo(&rb) == nil && rb.GetShadowRules() != nil {
					if len(rb.GetShadowRules().GetPolicies()) != 1 {
						t.Fatalf("shadow rules with %d policies, want one named by the would-be rule", len(rb.GetShadowRules().GetPolicies()))
					}
					n++
				}
			}
		}
	}
	return n
}
