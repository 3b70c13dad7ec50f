package xds

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
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
	// InboundPrefix starts the name of every inbound Listener:
	// "inbound|<namespace>/<service>".
	InboundPrefix = "inbound|"
	// LocalClusterPrefix starts the name of the cluster an inbound filter
	// chain proxies to: "local|<target port>", the workload's app.
	LocalClusterPrefix = "local|"
)

// probe is a path segment no Kubernetes namespace or service account can
// have (underscores are not allowed there), used to ask the policy engine
// whether whole namespaces or the whole mesh are let in.
const probe = "_tether_probe_"

// BuildResources returns what identity id may learn from snap: a Cluster
// (EDS, named "<namespace>/<service>", verifying the serving identities by
// URI SAN) and a ClusterLoadAssignment for every service id may reach on
// at least one port, and an inbound Listener with the RBAC network filter
// for every service id serves. Every type is present, possibly empty, and
// resources are in a deterministic order. TypedExtensionConfigs named
// NameGlobalsName, NameServicePrefix+"<ns>/<name>" and
// NameHiddenPrefix+"<hex id>" carry id's DNS name table and per-port outbound
// decisions, split by service (see api/discovery/v1 and MergeNameTables),
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
	sources := snap.Sources()
	services := snap.Services()
	namespaces := candidateNamespaces(snap, services)
	for _, svc := range services {
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
		serves := false
		for _, sid := range svc.Identities(td) {
			if sid == id {
				serves = true
				break
			}
		}
		if serves {
			l, err := buildInbound(snap, &svc, sources, namespaces)
			if err != nil {
				return nil, fmt.Errorf("inbound listener for %s: %w", svc.Key, err)
			}
			out[resource.ListenerType] = append(out[resource.ListenerType], l)
		}
	}
	return out, nil
}

// ClusterName is the name of the Cluster and ClusterLoadAssignment of key.
func ClusterName(key discovery.ServiceKey) string { return key.String() }

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
		Name:                 ClusterName(svc.Key),
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
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(svc.Key)}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// buildInbound returns the inbound Listener of svc: one filter chain per
// service port, matched on the target port, with an RBAC filter allowing
// the principals the policy engine lets in, then a tcp_proxy to the app.
func buildInbound(snap *discovery.Snapshot, svc *discovery.Service, sources []spiffeid.ID, namespaces []string) (*listenerv3.Listener, error) {
	tlsCtx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapBool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretSVID}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretBundle},
			},
		},
	}
	l := &listenerv3.Listener{
		Name:    InboundPrefix + svc.Key.String(),
		Address: socketAddress("0.0.0.0", InboundPort),
	}
	for _, p := range svc.Ports {
		principals := allowedPrincipals(snap, svc, p.Port, sources, namespaces)
		stat := fmt.Sprintf("inbound_%s_%s_%d", svc.Key.Namespace, svc.Key.Name, p.Port)
		rules := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}
		if len(principals) > 0 {
			rules.Policies = map[string]*rbacv3.Policy{
				"allowed": {
					Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
					Principals:  principals,
				},
			}
		}
		rbac, err := anypb.New(&rbacfilterv3.RBAC{StatPrefix: stat, Rules: rules})
		if err != nil {
			return nil, err
		}
		tcp, err := anypb.New(&tcpproxyv3.TcpProxy{
			StatPrefix:       stat,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: LocalClusterPrefix + strconv.Itoa(int(p.TargetPort))},
		})
		if err != nil {
			return nil, err
		}
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
			Name:             fmt.Sprintf("%s|%d", svc.Key, p.Port),
			FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapUint32(uint32(p.TargetPort))},
			Filters: []*listenerv3.Filter{
				{Name: wellknown.RoleBasedAccessControl, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: rbac}},
				{Name: wellknown.TCPProxy, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tcp}},
			},
			TransportSocket: transportSocket(wellknown.TransportSocketTLS, tlsCtx),
		})
	}
	return l, nil
}

// allowedPrincipals asks the policy engine who may reach port of svc: the
// whole mesh (a prefix spiffe://<td>/), whole namespaces (prefixes
// spiffe://<td>/ns/<ns>/) among the candidate namespaces (see
// candidateNamespaces: those listed, those of services and sources, and
// those policies name), and every known source identity not already
// covered, exactly. Sorted: mesh, namespaces, identities.
func allowedPrincipals(snap *discovery.Snapshot, svc *discovery.Service, port uint16, sources []spiffeid.ID, namespaces []string) []*rbacv3.Principal {
	td := snap.TrustDomain()
	eng := snap.Engine()
	allowed := func(id spiffeid.ID) bool {
		return eng.Allowed(id, svc.Key.Namespace, svc.Key.Name, port)
	}
	meshID, err := discovery.WorkloadID(td, probe, probe)
	if err == nil && allowed(meshID) {
		return []*rbacv3.Principal{principal(prefix(td.IDString() + "/"))}
	}
	var out []*rbacv3.Principal
	var prefixes []string
	for _, ns := range namespaces {
		id, err := discovery.WorkloadID(td, ns, probe)
		if err != nil || !allowed(id) {
			continue
		}
		p := td.IDString() + "/ns/" + ns + "/"
		prefixes = append(prefixes, p)
		out = append(out, principal(prefix(p)))
	}
	for _, src := range sources {
		if coveredByWorkloadPrefix(src, prefixes) || !allowed(src) {
			continue
		}
		out = append(out, principal(exact(src.String())))
	}
	return out
}

// coveredByWorkloadPrefix reports whether id starts with one of the
// namespace prefixes already allowed. (A prefix is a little wider than the
// engine's namespace rule, which admits only /ns/<ns>/sa/<sa> IDs.)
func coveredByWorkloadPrefix(id spiffeid.ID, prefixes []string) bool {
	s := id.String()
	for _, p := range prefixes {
		if len(s) > len(p) && s[:len(p)] == p {
			return true
		}
	}
	return false
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

func sortedKeys(m map[string]bool) []string {
	keys := slices.Collect(maps.Keys(m))
	slices.Sort(keys)
	return keys
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
