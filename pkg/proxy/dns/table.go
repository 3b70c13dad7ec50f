package dns

import (
	"net/netip"
	"strings"
	"sync/atomic"

	mdns "github.com/miekg/dns"
)

// Table is the mesh name data the DNS server answers from. Discovery
// implements it; [StaticTable] serves tests and the standalone mesh.
//
// Lookup is called for every query, concurrently, and must not block.
// fqdn is lower case and fully qualified with a trailing dot, for example
// "web.shop.svc.cluster.local.". ok is false when the name is not a mesh
// service; the query is then forwarded to the upstream resolvers.
type Table interface {
	Lookup(fqdn string) (rec Record, ok bool)
}

// HiddenTable is implemented by a Table that also knows the addresses of
// the mesh services this pod may reach on no port (but not their names:
// those are not sent to the pod, see api/discovery/v1). The server then
// answers NXDOMAIN instead of an upstream answer that holds such an
// address, and for the reverse (PTR) name of one. HiddenAddr is called
// concurrently and must not block.
type HiddenTable interface {
	HiddenAddr(a netip.Addr) bool
}

// Record is what the mesh knows about one service name.
type Record struct {
	// Addrs are the service's addresses; A answers take the IPv4 ones and
	// AAAA answers the IPv6 ones.
	Addrs []netip.Addr
	// Ports are published as SRV records _<name>._<proto>.<fqdn>.
	Ports []SRVPort
	// Reachable reports whether policy lets this pod call the service.
	Reachable bool
}

// SRVPort is one named port of a service.
type SRVPort struct {
	Name  string // port name, e.g. "http" (without the underscore)
	Proto string // "tcp" or "udp"
	Port  uint16
}

// StaticTable is an immutable [Table] built from a map. Replace it as a whole
// (see [Server.SetTable]) to change the data.
type StaticTable struct {
	m map[string]Record
}

var _ Table = (*StaticTable)(nil)

// NewStaticTable copies records into a table. Keys are service names, with or
// without the trailing dot, in any case.
func NewStaticTable(records map[string]Record) *StaticTable {
	m := make(map[string]Record, len(records))
	for name, rec := range records {
		m[canonical(name)] = rec
	}
	return &StaticTable{m: m}
}

// Lookup implements [Table].
func (t *StaticTable) Lookup(fqdn string) (Record, bool) {
	if t == nil {
		return Record{}, false
	}
	rec, ok := t.m[fqdn]
	return rec, ok
}

// tableRef holds the current table behind an atomic pointer so that updates
// apply to the next query without a restart.
type tableRef struct {
	p atomic.Pointer[tableBox]
}

type tableBox struct{ t Table }

func (r *tableRef) store(t Table) { r.p.Store(&tableBox{t: t}) }

func (r *tableRef) lookup(fqdn string) (Record, bool) {
	b := r.p.Load()
	if b == nil || b.t == nil {
		return Record{}, false
	}
	return b.t.Lookup(fqdn)
}

func (r *tableRef) hidden(a netip.Addr) bool {
	b := r.p.Load()
	if b == nil || b.t == nil {
		return false
	}
	h, ok := b.t.(HiddenTable)
	return ok && h.HiddenAddr(a)
}

// canonical lower-cases name and makes it fully qualified.
func canonical(name string) string {
	return mdns.CanonicalName(strings.TrimSpace(name))
}
