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
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// resolveAdminAddr makes a checked admin address absolute: an empty or
// unspecified host becomes the address the sidecar connected from. A host
// that is not that address is refused (a loopback host is accepted from a
// loopback peer), so the address names the sidecar's own host.
func resolveAdminAddr(addr string, from netip.Addr) (string, error) {
	if addr == "" {
		return "", nil
	}
	host, port, _ := net.SplitHostPort(addr) // checked by wire.ParseNodeMetadata
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

// maxErrorLen bounds the error kept of a node's bad metadata.
const maxErrorLen = 256

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
	Metadata wire.NodeMetadata `json:"metadata"`
	// MetadataError says what of the metadata was refused.
	MetadataError string `json:"metadata_error,omitempty"`
}

// nodeReport is the part of a stream's NodeInfo that its requests update:
// written by the stream's goroutine, read by Nodes.
type nodeReport struct {
	meta wire.NodeMetadata
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
	m, err := wire.ParseNodeMetadata(node.GetMetadata())
	if m.AdminAddr != "" {
		addr, aerr := resolveAdminAddr(m.AdminAddr, st.peer.Addr())
		if aerr != nil {
			err = errors.Join(err, fmt.Errorf("%w: %s: %w", wire.ErrBadMetadata, wire.MetadataAdminAddr, aerr))
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
