package wire

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
)

// A sidecar's name table is split into TypedExtensionConfigs, each
// carrying a [discoveryv1.NameTable], so that a change to one service
// sends only that service's entry:
//
//   - NameGlobalsName: the cluster domain and the inbound default, with no
//     services and no hashes;
//   - NameServicePrefix + "<namespace>/<name>": exactly one service the
//     caller may reach on some port;
//   - NameHiddenPrefix + "<hex id>": the addresses of one service the
//     caller may reach on no port. The id is an HMAC of the service's
//     namespace and name under a secret that only this discovery process
//     holds (see HiddenID): a workload, which can fetch its own name table
//     with its SVID, learns how many services are hidden from it and their
//     addresses, but cannot confirm a guessed name offline.
//
// Entries of the same service with the same decisions are shared by every
// node. A client subscribes to the extension configs as a wildcard and
// merges the entries (see MergeNameTables).
const (
	// NameTableName is the name of the whole, unsplit name table that
	// discovery sent before the split; MergeNameTables still reads it.
	NameTableName = "tether.names"
	// NameGlobalsName names the entry with the table's globals. (Not
	// NameTableName: a sidecar that asks for the unsplit table by name
	// must not take the globals alone for a whole, empty table.)
	NameGlobalsName = "tether.names/global"
	// NameServicePrefix starts the name of a reachable service's entry.
	NameServicePrefix = "tether.names/svc/"
	// NameHiddenPrefix starts the name of an unreachable service's entry.
	NameHiddenPrefix = "tether.names/hidden/"
	// HiddenIDLen is the length of a hidden entry's id, in bytes.
	HiddenIDLen = 16
)

// DefaultClusterDomain is the cluster DNS domain when none is configured.
const DefaultClusterDomain = "cluster.local"

// FQDN returns the fully qualified, lower-case DNS name of key in
// clusterDomain, with the trailing dot: "web.shop.svc.cluster.local.".
func FQDN(key ServiceKey, clusterDomain string) string {
	return strings.ToLower(key.Name + "." + key.Namespace + ".svc." + strings.Trim(clusterDomain, ".") + ".")
}

// IsNameTableEntry reports whether name is the name of a name-table
// entry (or of the unsplit table).
func IsNameTableEntry(name string) bool {
	return name == NameTableName || strings.HasPrefix(name, NameTableName+"/")
}

// MergeNameTables checks the form of the name-table entries among items
// (TypedExtensionConfigs; names that are not NameTableName or do not
// start with it and a slash are ignored) and merges them into one table:
// the globals of NameGlobalsName, the services sorted by namespace and
// name, the hidden addresses sorted and unique. Each entry must hold exactly what its name
// says. The unsplit form, one NameTableName, is accepted alone. It does
// not check the table's contents beyond that.
func MergeNameTables(items []types.Resource) (*discoveryv1.NameTable, error) {
	return MergeNameTableEntries(items, ParseNameTableEntry)
}

// MergeNameTableEntries is MergeNameTables with parse in place of
// ParseNameTableEntry, for a caller that keeps the entries it parsed
// before. parse must give what ParseNameTableEntry gives; the table
// returned may share the parsed tables' messages, which must not be
// modified.
func MergeNameTableEntries(items []types.Resource, parse func(*corev3.TypedExtensionConfig) (NameTableEntry, error)) (*discoveryv1.NameTable, error) {
	var m nameTableMerger
	for i, r := range items {
		tec, ok := r.(*corev3.TypedExtensionConfig)
		if !ok {
			return nil, fmt.Errorf("extension config %d is a %T, want a TypedExtensionConfig", i, r)
		}
		if !IsNameTableEntry(tec.GetName()) {
			continue
		}
		e, err := parse(tec)
		if err != nil {
			return nil, err
		}
		if err := m.add(e); err != nil {
			return nil, err
		}
	}
	return m.table()
}

// NameTableEntryKind is what a name-table entry holds.
type NameTableEntryKind int

const (
	// NameTableWhole is the unsplit table, NameTableName.
	NameTableWhole NameTableEntryKind = iota + 1
	// NameTableGlobals is the cluster domain and inbound default,
	// NameGlobalsName.
	NameTableGlobals
	// NameTableService is one service, NameServicePrefix.
	NameTableService
	// NameTableHidden is one unreachable service's addresses,
	// NameHiddenPrefix.
	NameTableHidden
)

// NameTableEntry is one name-table entry, parsed.
type NameTableEntry struct {
	Kind  NameTableEntryKind
	Table *discoveryv1.NameTable
}

// ParseNameTableEntry parses the name-table entry tec (IsNameTableEntry
// of its name must hold) and checks that a service or hash entry holds
// exactly the service or hash its name says. That the globals entry holds
// no services or hashes is checked when it is merged, after the check
// that it is the only one, as MergeNameTables always did.
func ParseNameTableEntry(tec *corev3.TypedExtensionConfig) (NameTableEntry, error) {
	name := tec.GetName()
	if tec.GetTypedConfig() == nil {
		return NameTableEntry{}, fmt.Errorf("extension config %q has no typed_config", name)
	}
	m := new(discoveryv1.NameTable)
	if err := tec.GetTypedConfig().UnmarshalTo(m); err != nil {
		return NameTableEntry{}, fmt.Errorf("extension config %q: %w", name, err)
	}
	switch {
	case name == NameTableName:
		return NameTableEntry{Kind: NameTableWhole, Table: m}, nil
	case name == NameGlobalsName:
		return NameTableEntry{Kind: NameTableGlobals, Table: m}, nil
	case strings.HasPrefix(name, NameServicePrefix):
		if len(m.GetServices()) != 1 || len(m.GetUnreachableAddresses()) != 0 || m.GetClusterDomain() != "" || m.GetInboundDefault() != "" {
			return NameTableEntry{}, fmt.Errorf("extension config %q does not hold exactly one service", name)
		}
		sn := m.GetServices()[0]
		if want := NameServicePrefix + sn.GetNamespace() + "/" + sn.GetName(); name != want {
			return NameTableEntry{}, fmt.Errorf("extension config %q holds service %s/%s", name, sn.GetNamespace(), sn.GetName())
		}
		return NameTableEntry{Kind: NameTableService, Table: m}, nil
	case strings.HasPrefix(name, NameHiddenPrefix):
		if len(m.GetServices()) != 0 || m.GetClusterDomain() != "" || m.GetInboundDefault() != "" {
			return NameTableEntry{}, fmt.Errorf("extension config %q holds more than addresses", name)
		}
		if id, err := hex.DecodeString(strings.TrimPrefix(name, NameHiddenPrefix)); err != nil || len(id) != HiddenIDLen {
			return NameTableEntry{}, fmt.Errorf("extension config %q: want %d bytes of hex after %q", name, HiddenIDLen, NameHiddenPrefix)
		}
		return NameTableEntry{Kind: NameTableHidden, Table: m}, nil
	}
	return NameTableEntry{}, fmt.Errorf("extension config %q: unknown name-table entry", name)
}

// nameTableMerger merges parsed entries, in the order of the items, into
// one table.
type nameTableMerger struct {
	whole, globals *discoveryv1.NameTable
	services       []*discoveryv1.ServiceName
	hidden         []string
	entries        int // split entries
}

func (m *nameTableMerger) add(e NameTableEntry) error {
	switch e.Kind {
	case NameTableWhole:
		if m.whole != nil {
			return fmt.Errorf("extension config %q is sent twice", NameTableName)
		}
		m.whole = e.Table
		return nil
	case NameTableGlobals:
		if m.globals != nil {
			return fmt.Errorf("extension config %q is sent twice", NameGlobalsName)
		}
		if len(e.Table.GetServices()) != 0 || len(e.Table.GetUnreachableAddresses()) != 0 {
			return fmt.Errorf("extension config %q holds services or addresses", NameGlobalsName)
		}
		m.globals = e.Table
	case NameTableService:
		m.services = append(m.services, e.Table.GetServices()[0])
	case NameTableHidden:
		m.hidden = append(m.hidden, e.Table.GetUnreachableAddresses()...)
	}
	m.entries++
	return nil
}

func (m *nameTableMerger) table() (*discoveryv1.NameTable, error) {
	switch {
	case m.whole != nil && m.entries > 0:
		return nil, fmt.Errorf("extension config %q is sent with split name-table entries", NameTableName)
	case m.whole != nil:
		return m.whole, nil
	case m.globals == nil:
		return nil, fmt.Errorf("no name table (extension config %q)", NameGlobalsName)
	}
	merged := &discoveryv1.NameTable{
		ClusterDomain:        m.globals.GetClusterDomain(),
		InboundDefault:       m.globals.GetInboundDefault(),
		Services:             m.services,
		UnreachableAddresses: m.hidden,
	}
	slices.SortFunc(merged.Services, func(a, b *discoveryv1.ServiceName) int {
		if c := strings.Compare(a.GetNamespace(), b.GetNamespace()); c != 0 {
			return c
		}
		return strings.Compare(a.GetName(), b.GetName())
	})
	slices.Sort(merged.UnreachableAddresses)
	merged.UnreachableAddresses = slices.Compact(merged.UnreachableAddresses)
	return merged, nil
}
