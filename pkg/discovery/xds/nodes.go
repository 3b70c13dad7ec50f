package xds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Keys of node.metadata that a Tether sidecar reports about itself.
const (
	// MetadataAdminAddr is the sidecar's admin address, host:port (an IP
	// literal, or an empty or unspecified host for "the address I
	// connected from").
	MetadataAdminAddr = "admin_addr"
	// MetadataSVIDExpiry is the NotAfter of the sidecar's current SVID,
	// RFC 3339.
	MetadataSVIDExpiry = "svid_expiry"
	// MetadataVersion is the sidecar's build version.
	MetadataVersion = "version"
)

// Limits on node.metadata. Metadata comes from the sidecar and is not
// trusted: anything larger is not kept at all.
const (
	MaxMetadataBytes  = 4096
	MaxMetadataFields = 16
	maxVersionLen     = 64
	maxAddrLen        = 64 // "[" + longest IPv6 + "]:" + port fits
	maxTimeLen        = 40
	maxErrorLen       = 256
)

// NodeMetadata is what a sidecar reports in node.metadata, checked by
// ParseNodeMetadata.
type NodeMetadata struct {
	AdminAddr  string    `json:"admin_addr,omitempty"`
	SVIDExpiry time.Time `json:"svid_expiry,omitzero"`
	Version    string    `json:"version,omitempty"`
}

// Struct is m as node.metadata, with the fields that are set.
func (m NodeMetadata) Struct() *structpb.Struct {
	f := map[string]*structpb.Value{}
	if m.AdminAddr != "" {
		f[MetadataAdminAddr] = structpb.NewStringValue(m.AdminAddr)
	}
	if !m.SVIDExpiry.IsZero() {
		f[MetadataSVIDExpiry] = structpb.NewStringValue(m.SVIDExpiry.UTC().Format(time.RFC3339))
	}
	if m.Version != "" {
		f[MetadataVersion] = structpb.NewStringValue(m.Version)
	}
	return &structpb.Struct{Fields: f}
}

// ErrBadMetadata marks every error of ParseNodeMetadata.
var ErrBadMetadata = errors.New("node metadata")

// ParseNodeMetadata checks the keys it knows in md and returns the ones
// that are valid; the error (wrapping ErrBadMetadata) names the others.
// Metadata over MaxMetadataBytes or MaxMetadataFields is refused whole.
// Unknown keys are ignored. A nil md is empty metadata.
func ParseNodeMetadata(md *structpb.Struct) (NodeMetadata, error) {
	var m NodeMetadata
	if md == nil {
		return m, nil
	}
	if n := len(md.GetFields()); n > MaxMetadataFields {
		return m, fmt.Errorf("%w: %d fields, more than %d", ErrBadMetadata, n, MaxMetadataFields)
	}
	if n := proto.Size(md); n > MaxMetadataBytes {
		return m, fmt.Errorf("%w: %d bytes, more than %d", ErrBadMetadata, n, MaxMetadataBytes)
	}
	var errs []error
	str := func(key string, limit int) (string, bool) {
		v, ok := md.GetFields()[key]
		if !ok {
			return "", false
		}
		s, isStr := v.GetKind().(*structpb.Value_StringValue)
		switch {
		case !isStr:
			errs = append(errs, fmt.Errorf("%s: want a string", key))
		case len(s.StringValue) > limit:
			errs = append(errs, fmt.Errorf("%s: %d bytes, more than %d", key, len(s.StringValue), limit))
		case !printable(s.StringValue):
			errs = append(errs, fmt.Errorf("%s: not printable ASCII", key))
		default:
			return s.StringValue, true
		}
		return "", false
	}
	if s, ok := str(MetadataAdminAddr, maxAddrLen); ok {
		if err := checkAdminAddr(s); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", MetadataAdminAddr, s, err))
		} else {
			m.AdminAddr = s
		}
	}
	if s, ok := str(MetadataSVIDExpiry, maxTimeLen); ok {
		if t, err := time.Parse(time.RFC3339, s); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want an RFC 3339 time", MetadataSVIDExpiry, s))
		} else {
			m.SVIDExpiry = t.UTC()
		}
	}
	if s, ok := str(MetadataVersion, maxVersionLen); ok {
		m.Version = s
	}
	if err := errors.Join(errs...); err != nil {
		return m, fmt.Errorf("%w: %s", ErrBadMetadata, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return m, nil
}

// checkAdminAddr accepts host:port with a numeric port and a host that is
// an IP literal or empty. Names are refused: whoever reads the address
// should not resolve names a sidecar chose.
func checkAdminAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return errors.New("want a port from 1 to 65535")
	}
	if host != "" {
		if a, err := netip.ParseAddr(host); err != nil || a.Zone() != "" {
			return errors.New("want an IP address (or no host), not a name")
		}
	}
	return nil
}

// resolveAdminAddr makes a checked admin address absolute: an empty or
// unspecified host becomes the address the sidecar connected from. A host
// that is not that address is refused (a loopback host is accepted from a
// loopback peer), so the address names the sidecar's own host.
func resolveAdminAddr(addr string, from netip.Addr) (string, error) {
	if addr == "" {
		return "", nil
	}
	host, port, _ := net.SplitHostPort(addr) // checked by ParseNodeMetadata
	if !from.IsValid() {
		return "", errors.New("the sidecar's peer address is unknown")
	}
	from = from.Unmap()
	if host == "" {
		return net.JoinHostPort(from.String(), port), nil
	}
	a := netip.MustParseAddr(host).Unmap()
	switch {
	case a.IsUnspecified():
		return net.JoinHostPort(from.String(), port), nil
	case a == from, a.IsLoopback() && from.IsLoopback():
		return net.JoinHostPort(a.String(), port), nil
	}
	return "", fmt.Errorf("host %s is not the address the sidecar connected from (%s)", a, from)
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// NodeInfo describes one open ADS stream whose node.id has been checked.
type NodeInfo struct {
	// ID is the node's (verified) SPIFFE ID.
	ID string `json:"spiffe_id"`
	// Peer is the address the stream comes from.
	Peer string `json:"peer"`
	// ConnectedSince is when the stream opened.
	ConnectedSince time.Time `json:"connected_since"`
	// ConnectionSVIDExpiry is the NotAfter of the SVID the sidecar
	// connected with (verified, but not updated on renewal).
	ConnectionSVIDExpiry time.Time `json:"connection_svid_expiry,omitzero"`
	// Metadata is what the sidecar last reported, checked; AdminAddr is
	// resolved against Peer.
	Metadata NodeMetadata `json:"metadata"`
	// MetadataError says what of the metadata was refused.
	MetadataError string `json:"metadata_error,omitempty"`
}

// nodeReport is the part of a stream's NodeInfo that its requests update:
// written by the stream's goroutine, read by Nodes.
type nodeReport struct {
	meta NodeMetadata
	err  string
}

// peerInfo is where a stream comes from and the expiry of its client
// certificate.
func peerInfo(ctx context.Context) (addr netip.AddrPort, certExpiry time.Time) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return addr, certExpiry
	}
	if p.Addr != nil {
		addr, _ = netip.ParseAddrPort(p.Addr.String())
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		certExpiry = info.State.PeerCertificates[0].NotAfter.UTC()
	}
	return addr, certExpiry
}

// observeNode records node's metadata for st. Only the stream's goroutine
// calls it; a request without a new Node (the server reuses the last one)
// costs a pointer comparison.
func (s *Server) observeNode(st *stream, node *corev3.Node) {
	if node == st.lastNode {
		return
	}
	st.lastNode = node
	m, err := ParseNodeMetadata(node.GetMetadata())
	if m.AdminAddr != "" {
		addr, aerr := resolveAdminAddr(m.AdminAddr, st.peer.Addr())
		if aerr != nil {
			err = errors.Join(err, fmt.Errorf("%w: %s: %w", ErrBadMetadata, MetadataAdminAddr, aerr))
		}
		m.AdminAddr = addr
	}
	ns := &nodeReport{meta: m}
	if err != nil {
		ns.err = strings.ReplaceAll(err.Error(), "\n", "; ")
		if len(ns.err) > maxErrorLen {
			ns.err = ns.err[:maxErrorLen] + "..."
		}
		if prev := st.report.Load(); prev == nil || prev.err != ns.err {
			s.Logger.Warn("xds: ignoring bad node metadata", slog.String("spiffe_id", st.id.String()),
				slog.String("peer", st.peer.String()), slog.String("error", ns.err))
		}
	}
	st.report.Store(ns)
}

// Nodes returns the open streams whose node has been checked, by SPIFFE
// ID and then age. A sidecar with several streams appears once per stream.
func (s *Server) Nodes() []NodeInfo {
	s.init()
	s.mu.Lock()
	out := make([]NodeInfo, 0, len(s.streams))
	for _, st := range s.streams {
		if st.node == "" {
			continue
		}
		ni := NodeInfo{ID: st.node, ConnectedSince: st.since, ConnectionSVIDExpiry: st.certExpiry}
		if st.peer.IsValid() {
			ni.Peer = st.peer.String()
		}
		if ns := st.report.Load(); ns != nil {
			ni.Metadata, ni.MetadataError = ns.meta, ns.err
		}
		out = append(out, ni)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b NodeInfo) int {
		return cmp.Or(strings.Compare(a.ID, b.ID), a.ConnectedSince.Compare(b.ConnectedSince), strings.Compare(a.Peer, b.Peer))
	})
	return out
}
