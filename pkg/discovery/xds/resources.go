package xds

import (
	"fmt"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// Names the resources refer to but discovery does not send: the sidecar
// supplies them (its SVID and trust bundle over SDS, its local app).
const (
	// SecretSVID is the SDS secret name of the sidecar's own SVID.
	SecretSVID = "default"
	// SecretBundle is the SDS secret name of the trust bundle.
	SecretBundle = "ROOTCA"
	// InboundPort is the port of the sidecar's inbound listener.
	InboundPort = 15006
	// InboundPrefix starts the name of the inbound Listener.
	InboundPrefix = "inbound|"
)

// BuildResources returns what identity id may learn from snap: a Cluster
// (EDS, named "<namespace>/<service>", verifying the serving identities by
// URI SAN) and a ClusterLoadAssignment for every service id may reach on
// at least one port, and, if id serves any service, the inbound Listener
// of id's pods (see buildInbound and discovery.InboundChains). Every type is present, possibly empty, and
// resources are in a deterministic order. TypedExtensionConfigs named
// wire.NameGlobalsName, wire.NameServicePrefix+"<ns>/<name>" and
// wire.NameHiddenPrefix+"<hex id>" carry id's DNS name table and per-port outbound
// decisions, split by service (see api/discovery/v1 and wire.MergeNameTables),
// with names in clusterDomain (default cluster.local).
func BuildResources(snap *discovery.Snapshot, id spiffeid.ID, clusterDomain string) (map[resource.Type][]types.Resource, error) {
	nt, err := buildNameTable(snap, id, clusterDomain)
	if err != nil {
		return nil, err
	}
	out := map[resource.Type][]types.Resource{
		resource.ClusterType:         {},
		resource.EndpointType:        {},
		resource.ListenerType:        {},
		resource.ExtensionConfigType: nt,
	}
	td := snap.TrustDomain()
	eng := snap.Engine()
	for _, svc := range snap.Services() {
		reach := false
		for _, p := range svc.Ports {
			if eng.Decide(id, svc.Key.Namespace, svc.Key.Name, p.Port).Allowed {
				reach = true
				break
			}
		}
		if reach {
			out[resource.ClusterType] = append(out[resource.ClusterType], buildCluster(&svc, td))
			out[resource.EndpointType] = append(out[resource.EndpointType], buildCLA(&svc))
		}
	}
	if chains := snap.InboundChains(id); len(chains) > 0 {
		l, err := buildInbound(chains, func(sp discovery.ServicePort) (*anypb.Any, error) {
			return rbacFilter(eng, sp)
		})
		if err != nil {
			return nil, fmt.Errorf("inbound listener of %s: %w", id, err)
		}
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
	}
	return out, nil
}

func buildCluster(svc *discovery.Service, td spiffeid.TrustDomain) *clusterv3.Cluster {
	var sans []*tlsv3.SubjectAltNameMatcher
	for _, sid := range svc.Identities(td) {
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: exact(sid.String()),
		})
	}
	tlsCtx := &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretSVID}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
				CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
					ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretBundle},
				},
			},
		},
	}
	return &clusterv3.Cluster{
		Name:                 wire.ClusterName(svc.Key),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		},
		ConnectTimeout:  durationpb.New(5e9),
		TransportSocket: transportSocket(wellknown.TransportSocketTLS, tlsCtx),
	}
}

func buildCLA(svc *discovery.Service) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, e := range svc.Endpoints {
		for _, p := range svc.Ports {
			port := p.TargetPort
			if e.Port != 0 {
				port = e.Port
			}
			lbs = append(lbs, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(e.Addr.String(), uint32(port)),
				}},
			})
			if e.Port != 0 {
				// An endpoint with its own port serves every service port there.
				break
			}
		}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: wire.ClusterName(svc.Key)}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// buildInbound returns the inbound Listener of an identity's pods, from
// their chains (see discovery.InboundChains): the listener filter
// original_dst, so that a stock Envoy matches the captured destination
// rather than port 15006, then one filter chain per chain, matched on the
// target port and the pods' addresses, with one RBAC filter per decider
// (Envoy runs them in turn, so a caller must pass every one) and a
// tcp_proxy to the app. rbac returns a decider's RBAC filter config.
func buildInbound(chains []discovery.InboundChain, rbac func(discovery.ServicePort) (*anypb.Any, error)) (*listenerv3.Listener, error) {
	tlsCtx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapBool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretSVID}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretBundle},
			},
		},
	}
	odst, err := anypb.New(&originaldstv3.OriginalDst{})
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:    wire.InboundListenerName,
		Address: socketAddress("0.0.0.0", InboundPort),
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       wellknown.OriginalDestination,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: odst},
		}},
	}
	for _, c := range chains {
		var filters []*listenerv3.Filter
		for _, d := range c.Deciders {
			cfg, err := rbac(d)
			if err != nil {
				return nil, err
			}
			filters = append(filters, &listenerv3.Filter{Name: wellknown.RoleBasedAccessControl, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}})
		}
		tcp, err := anypb.New(&tcpproxyv3.TcpProxy{
			StatPrefix:       fmt.Sprintf("inbound_%d", c.TargetPort),
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: wire.LocalClusterPrefix + strconv.Itoa(int(c.TargetPort))},
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &listenerv3.Filter{Name: wellknown.TCPProxy, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tcp}})
		m := &listenerv3.FilterChainMatch{DestinationPort: wrapUint32(uint32(c.TargetPort))}
		for _, a := range c.Addrs {
			m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapUint32(uint32(a.BitLen()))})
		}
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
			Name:             c.Name(),
			FilterChainMatch: m,
			Filters:          filters,
			TransportSocket:  transportSocket(wellknown.TransportSocketTLS, tlsCtx),
		})
	}
	return l, nil
}

// rbacFilter is the RBAC network filter config of one decider: an ALLOW
// policy with the principals the policy engine admits to that service
// port (see policy.Engine.Admitted); none lets nobody in. When the
// would-be admission (policies and defaults in audit mode enforcing)
// differs, shadow_rules carry it: one ALLOW policy named by the would-be
// rule that denies (policy.Engine.WouldBeDenial). A caller the rules admit
// and the shadow rules do not is audit-denied; sidecars that do not know
// shadow rules ignore them and enforce the rules.
func rbacFilter(eng *policy.Engine, sp discovery.ServicePort) (*anypb.Any, error) {
	ns, svc, port := sp.Service.Namespace, sp.Service.Name, sp.Port
	enforced := eng.Admitted(ns, svc, port)
	rules := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}
	if ps := admissionPrincipals(enforced); len(ps) > 0 {
		rules.Policies = map[string]*rbacv3.Policy{
			"allowed": {
				Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
				Principals:  ps,
			},
		}
	}
	cfg := &rbacfilterv3.RBAC{StatPrefix: fmt.Sprintf("inbound_%s_%s_%d", ns, svc, port), Rules: rules}
	if wouldBe := eng.WouldBeAdmitted(ns, svc, port); !wouldBe.Equal(enforced) {
		ps := admissionPrincipals(wouldBe)
		if len(ps) == 0 {
			ps = []*rbacv3.Principal{nobody()}
		}
		cfg.ShadowRules = &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{
			eng.WouldBeDenial(ns, svc, port): {
				Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
				Principals:  ps,
			},
		}}
		cfg.ShadowRulesStatPrefix = "audit_"
	}
	return anypb.New(cfg)
}

// nobody is the principal that matches no one (an RBAC policy needs at
// least one): not any.
func nobody() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}}}
}

func principal(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{
		Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m},
	}}
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func prefix(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
}

func socketAddress(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func transportSocket(name string, cfg proto.Message) *corev3.TransportSocket {
	a, err := anypb.New(cfg)
	if err != nil {
		// Marshaling a well-formed generated message does not fail.
		panic(fmt.Sprintf("marshal %s: %v", name, err))
	}
	return &corev3.TransportSocket{Name: name, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

func wrapBool(b bool) *wrapperspb.BoolValue       { return wrapperspb.Bool(b) }
func wrapUint32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }
