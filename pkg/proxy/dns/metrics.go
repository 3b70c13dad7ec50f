package dns

import (
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Query results, the "result" label of tether_sidecar_dns_queries_total.
const (
	resultMesh        = "mesh"        // answered from the mesh table
	resultUnreachable = "unreachable" // NXDOMAIN for a mesh name the pod may not reach
	resultForwarded   = "forwarded"   // answered by an upstream
	resultCached      = "cached"      // answered from the cache
	resultServfail    = "servfail"    // every upstream failed
	resultRejected    = "rejected"    // FORMERR, NOTIMP or REFUSED for the query's shape
)

type metrics struct {
	queries       *prometheus.CounterVec
	cacheHits     prometheus.Counter
	forwardErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_dns_queries_total",
			Help: "DNS queries by type (A, AAAA, SRV, ..., other) and result (mesh, unreachable, forwarded, cached, servfail, rejected).",
		}, []string{"type", "result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_sidecar_dns_cache_hits_total",
			Help: "Forwarded DNS queries answered from the cache.",
		}),
		forwardErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_dns_forward_errors_total",
			Help: "Failed exchanges with upstream resolvers, by transport (udp, tcp).",
		}, []string{"net"}),
	}
	if reg != nil {
		reg.MustRegister(m.queries, m.cacheHits, m.forwardErrors)
	}
	return m
}

// typeLabel bounds the label's cardinality to well-known types.
func typeLabel(t uint16) string {
	switch t {
	case mdns.TypeA, mdns.TypeAAAA, mdns.TypeSRV, mdns.TypeCNAME, mdns.TypePTR,
		mdns.TypeMX, mdns.TypeTXT, mdns.TypeNS, mdns.TypeSOA, mdns.TypeHTTPS,
		mdns.TypeSVCB, mdns.TypeANY, mdns.TypeCAA:
		return mdns.TypeToString[t]
	}
	return "other"
}
