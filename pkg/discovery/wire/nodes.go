package wire

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

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

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
