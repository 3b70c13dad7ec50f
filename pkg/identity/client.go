package identity

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// Client talks to tether-ca. It verifies that the server is the CA of the
// trust domain against a bundle source, and presents an SVID when it has one.
type Client struct {
	conn *grpc.ClientConn
	api  cav1.CAClient
	td   spiffeid.TrustDomain
}

// Keepalive of connections to the CA: a ping after this long without
// traffic, and the connection dropped if no answer comes in
// ClientKeepaliveTimeout. A WatchBundle stream is idle between bundle
// changes: without pings, a client whose CA vanished without closing the
// connection (its node died) would wait on it forever and miss the next
// root rotation. tether-ca accepts pings every 10s or more.
const (
	ClientKeepaliveTime    = 30 * time.Second
	ClientKeepaliveTimeout = 10 * time.Second
)

// Dial connects to the CA at addr (host:port). bundle verifies the CA; svid,
// if not nil, is presented so that Sign renews it without a credential.
// opts are added to the defaults (tests shorten the keepalive with them).
func Dial(addr string, td spiffeid.TrustDomain, bundle x509bundle.Source, svid x509svid.Source, opts ...grpc.DialOption) (*Client, error) {
	authorize := tlsconfig.AuthorizeID(CAID(td))
	var tc = tlsconfig.TLSClientConfig(bundle, authorize)
	if svid != nil {
		tc = tlsconfig.MTLSClientConfig(svid, bundle, authorize)
	}
	// No service config is published in DNS for tether-ca: skip the
	// _grpc_config TXT lookup, which stalls bootstrap for seconds where
	// the resolver does not answer.
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDisableServiceConfig(),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: ClientKeepaliveTime, Timeout: ClientKeepaliveTimeout, PermitWithoutStream: true}),
	}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("CA client %s: %w", addr, err)
	}
	return &Client{conn: conn, api: cav1.NewCAClient(conn), td: td}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// FetchSVID makes a fresh P-256 key and has the CA sign it. cred may be nil
// when the client presents its current SVID. It returns the SVID, checked
// with go-spiffe, and the CA's bundle at signing time.
func (c *Client) FetchSVID(ctx context.Context, cred *cav1.Credential) (*x509svid.SVID, *spiffebundle.Bundle, error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.api.Sign(ctx, &cav1.SignRequest{Csr: csr, Credential: cred})
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, nil, errors.New("CA returned no certificate")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	// go-spiffe checks that what came back is an X509-SVID for our key.
	svid, err := x509svid.ParseRaw(bytes.Join(resp.GetCertChain(), nil), keyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("CA returned an invalid SVID: %w", err)
	}
	bundle, err := SPIFFEBundleFromMessage(resp.GetBundle())
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle.X509Bundle()); err != nil {
		return nil, nil, fmt.Errorf("CA returned an SVID that does not verify against its bundle: %w", err)
	}
	return svid, bundle, nil
}

// SignJWT asks for a JWT-SVID for the SVID this client presents.
func (c *Client) SignJWT(ctx context.Context, audience []string, ttl time.Duration) (string, error) {
	resp, err := c.api.SignJWT(ctx, &cav1.SignJWTRequest{Audience: audience, TtlSeconds: int64(ttl / time.Second)})
	if err != nil {
		return "", fmt.Errorf("sign JWT: %w", err)
	}
	return resp.GetToken(), nil
}

// WatchBundle calls fn with the current bundle and each change until ctx
// ends or the stream breaks.
func (c *Client) WatchBundle(ctx context.Context, fn func(b *spiffebundle.Bundle)) error {
	return c.WatchBundleSet(ctx, func(s BundleSet) { fn(s.Local) })
}

// BundleSet is one WatchBundle message: this trust domain's bundle and the
// federated bundles the CA sent with it.
type BundleSet struct {
	Local *spiffebundle.Bundle
	// Federated holds the foreign bundles that parsed, sorted by trust
	// domain; Refused says why each of the others was left out.
	Federated []*spiffebundle.Bundle
	Refused   []error
}

// WatchBundleSet calls fn with the current bundles and each change until
// ctx ends or the stream breaks. A message whose own bundle does not parse
// ends the stream; a federated bundle that does not parse is left out (it
// is not trusted) and reported in BundleSet.Refused.
func (c *Client) WatchBundleSet(ctx context.Context, fn func(BundleSet)) error {
	stream, err := c.api.WatchBundle(ctx, &cav1.WatchBundleRequest{})
	if err != nil {
		return fmt.Errorf("watch bundle: %w", err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch bundle: %w", err)
		}
		b, err := SPIFFEBundleFromMessage(m)
		if err != nil {
			return err
		}
		set := BundleSet{Local: b}
		set.Federated, set.Refused = FederatedBundlesFromMessage(b.TrustDomain(), m.GetFederatedBundles())
		fn(set)
	}
}

// FederatedBundlesFromMessage parses the federated bundles of a WatchBundle
// message sent for the local trust domain. It leaves out, with the reason,
// an entry whose trust domain does not parse, is the local one (a foreign
// bundle never stands for the local domain's) or repeats an earlier one, one
// with a certificate or key that does not parse, and one CheckForeignBundle
// refuses (no X.509 authorities, or a CA certificate of another domain).
func FederatedBundlesFromMessage(local spiffeid.TrustDomain, ms []*cav1.FederatedBundle) ([]*spiffebundle.Bundle, []error) {
	var out []*spiffebundle.Bundle
	var refused []error
	seen := map[spiffeid.TrustDomain]bool{}
	for _, m := range ms {
		b, err := federatedBundleFromMessage(local, m)
		switch {
		case err != nil:
		case seen[b.TrustDomain()]:
			err = fmt.Errorf("%w: trust domain %s is sent twice", ErrForeignBundle, b.TrustDomain())
		default:
			seen[b.TrustDomain()] = true
			out = append(out, b)
			continue
		}
		refused = append(refused, err)
	}
	slices.SortFunc(out, func(a, b *spiffebundle.Bundle) int {
		return strings.Compare(a.TrustDomain().Name(), b.TrustDomain().Name())
	})
	return out, refused
}

func federatedBundleFromMessage(local spiffeid.TrustDomain, m *cav1.FederatedBundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(m.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("%w: federated bundle with a bad trust domain %q: %v", ErrForeignBundle, m.GetTrustDomain(), err)
	}
	if td == local {
		return nil, fmt.Errorf("%w: a federated bundle for the local trust domain %s", ErrForeignBundle, td)
	}
	b := spiffebundle.New(td)
	for _, der := range m.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: federated bundle for %s: bad certificate: %v", ErrForeignBundle, td, err)
		}
		b.AddX509Authority(c)
	}
	if err := CheckForeignBundle(td, b); err != nil {
		return nil, err
	}
	for _, k := range m.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("%w: federated bundle for %s: bad JWT key %q: %v", ErrForeignBundle, td, k.GetKeyId(), err)
		}
		if err := b.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("%w: federated bundle for %s: %v", ErrForeignBundle, td, err)
		}
	}
	b.SetSequenceNumber(m.GetSequence())
	return b, nil
}

// BundleFromMessage parses a bundle message.
func BundleFromMessage(m *cav1.Bundle) (*x509bundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(m.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("bundle: bad trust domain: %w", err)
	}
	b := x509bundle.New(td)
	for _, der := range m.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("bundle: bad certificate: %w", err)
		}
		b.AddX509Authority(c)
	}
	if b.Empty() {
		return nil, errors.New("bundle: no authorities")
	}
	return b, nil
}

// SPIFFEBundleFromMessage parses a bundle message with its JWT keys and
// sequence number.
func SPIFFEBundleFromMessage(m *cav1.Bundle) (*spiffebundle.Bundle, error) {
	xb, err := BundleFromMessage(m)
	if err != nil {
		return nil, err
	}
	b := spiffebundle.FromX509Bundle(xb)
	for _, k := range m.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("bundle: bad JWT key %q: %w", k.GetKeyId(), err)
		}
		if err := b.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
	}
	b.SetSequenceNumber(m.GetSequence())
	if m.GetRefreshHintSeconds() > 0 {
		b.SetRefreshHint(time.Duration(m.GetRefreshHintSeconds()) * time.Second)
	}
	return b, nil
}

// Report sends a sidecar report (see Server.Report) over this client's
// connection, which must present the caller's SVID. It returns the
// heartbeat interval the CA asks for.
func (c *Client) Report(ctx context.Context, req *cav1.ReportRequest) (time.Duration, error) {
	resp, err := c.api.Report(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("report: %w", err)
	}
	return time.Duration(resp.GetIntervalSeconds()) * time.Second, nil
}
