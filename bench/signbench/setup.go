package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/pkg/identity"
)

// Phase names, in the order of the first round.
const (
	phaseBare     = "bare"
	phaseCASign   = "ca.Sign"
	phaseE2EToken = "e2e-token"
	phaseE2EMTLS  = "e2e-mtls"
	phaseE2EDial  = "e2e-dial"
)

var allPhases = []string{phaseBare, phaseCASign, phaseE2EToken, phaseE2EMTLS, phaseE2EDial}

// Defaults of Config.
const (
	defaultDuration    = 3 * time.Second
	defaultWarmup      = 500 * time.Millisecond
	defaultRounds      = 5
	defaultConcurrency = 32
	defaultCSRs        = 256
)

// Config is one benchmark run.
type Config struct {
	Duration    time.Duration // measured time per phase
	Warmup      time.Duration // unmeasured time at the start of each phase
	Rounds      int
	Concurrency int // clients of the e2e phases
	Conns       int // connections the e2e clients share; 0 means one per client
	Workers     int // goroutines of bare and ca.Sign; 0 means GOMAXPROCS
	CSRs        int // pre-made CSRs
	Phases      []string
	JSON        bool
	CPUProfile  string
}

func (c *Config) fill() error {
	if c.Duration == 0 {
		c.Duration = defaultDuration
	}
	if c.Rounds == 0 {
		c.Rounds = defaultRounds
	}
	if c.Concurrency == 0 {
		c.Concurrency = defaultConcurrency
	}
	if c.Conns == 0 {
		c.Conns = c.Concurrency
	}
	if c.Workers == 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.CSRs == 0 {
		c.CSRs = defaultCSRs
	}
	if len(c.Phases) == 0 {
		c.Phases = allPhases
	}
	switch {
	case c.Duration < 0 || c.Warmup < 0:
		return errors.New("-duration and -warmup must not be negative")
	case c.Rounds < 0 || c.Concurrency < 0 || c.Workers < 0 || c.CSRs < 0:
		return errors.New("-rounds, -concurrency, -workers and -csrs must be positive")
	case c.Conns < 0 || c.Conns > c.Concurrency:
		return fmt.Errorf("-conns %d must be between 1 and -concurrency (%d): each connection needs a client", c.Conns, c.Concurrency)
	}
	for _, p := range c.Phases {
		if !slices.Contains(allPhases, p) {
			return fmt.Errorf("unknown phase %q (known: %s)", p, strings.Join(allPhases, ", "))
		}
	}
	return nil
}

// trustDomain and loadID name what the benchmark issues.
var (
	trustDomain = spiffeid.RequireTrustDomainFromString("bench.local")
	loadID      = spiffeid.RequireFromPath(trustDomain, "/ns/bench/sa/load")
)

// bench holds what the phases share: the CSRs, the baseline signer, an
// in-process CA with its gRPC server, and the client connections.
type bench struct {
	cfg  Config
	csrs [][]byte
	bare *bareCA

	ca     *identity.CA
	dir    string
	server *grpc.Server
	addr   string

	token      *cav1.Credential // reusable join token for loadID
	tokenCreds credentials.TransportCredentials
	tokenConns []*grpc.ClientConn // TLS; the client shows no certificate
	mtlsConns  []*grpc.ClientConn // mTLS; the client presents an SVID for loadID
}

// newBench makes everything the phases need; Close releases it.
func newBench(ctx context.Context, cfg Config) (_ *bench, err error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	b := &bench{cfg: cfg}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	if b.csrs, err = makeCSRs(cfg.CSRs); err != nil {
		return nil, err
	}
	if b.bare, err = newBareCA(loadID.URL()); err != nil {
		return nil, err
	}
	if err := b.startCA(ctx); err != nil {
		return nil, err
	}
	if err := b.connect(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// startCA starts a CA on a disk store in a temporary directory, and its gRPC
// server on loopback. It uses the real clock, since TLS checks validity.
func (b *bench) startCA(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "signbench-")
	if err != nil {
		return err
	}
	b.dir = dir
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		return err
	}
	b.ca, err = identity.NewCA(ctx, identity.Config{TrustDomain: trustDomain, Store: store})
	if err != nil {
		return err
	}
	// Reusable, so that attestation reads the state and writes nothing.
	tok, _, err := b.ca.CreateJoinToken(ctx, loadID, 24*time.Hour, true)
	if err != nil {
		return err
	}
	b.token = &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.addr = l.Addr().String()
	b.server = identity.NewServer(b.ca, map[string]identity.Attestor{identity.KindJoinToken: b.ca.JoinTokens()}, nil).GRPCServer()
	go b.server.Serve(l)
	return nil
}

// connect opens the e2e connections and makes one request on each, so that
// the TLS handshakes happen before any phase. The clients verify the CA
// against a copy of the bundle, as a real client holds one.
func (b *bench) connect(ctx context.Context) error {
	bundle := b.ca.Bundle().Bundle.Clone()
	authorize := tlsconfig.AuthorizeID(identity.CAID(trustDomain))
	b.tokenCreds = credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, authorize))

	// The SVID the renewing clients present comes through the real client.
	client, err := identity.Dial(b.addr, trustDomain, bundle, nil)
	if err != nil {
		return err
	}
	svid, _, err := client.FetchSVID(ctx, b.token)
	client.Close()
	if err != nil {
		return fmt.Errorf("bootstrap SVID for the mTLS clients: %w", err)
	}
	mtlsCreds := credentials.NewTLS(tlsconfig.MTLSClientConfig(svid, bundle, authorize))

	// The goroutines of a connection inherit the labels of the one that
	// opens it, so that a CPU profile tells the clients from the server.
	pprof.Do(ctx, clientLabels, func(ctx context.Context) { err = b.dial(ctx, mtlsCreds) })
	return err
}

// dial opens Conns connections of each kind, TLS with a join token and mTLS
// with an SVID, and makes the first request on each.
func (b *bench) dial(ctx context.Context, mtlsCreds credentials.TransportCredentials) error {
	for range b.cfg.Conns {
		for _, c := range []struct {
			conns *[]*grpc.ClientConn
			creds credentials.TransportCredentials
			cred  *cav1.Credential
		}{{&b.tokenConns, b.tokenCreds, b.token}, {&b.mtlsConns, mtlsCreds, nil}} {
			conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(c.creds))
			if err != nil {
				return err
			}
			*c.conns = append(*c.conns, conn)
			if _, err := cav1.NewCAClient(conn).Sign(ctx, &cav1.SignRequest{Csr: b.csrs[0], Credential: c.cred}); err != nil {
				return fmt.Errorf("first request on a new connection: %w", err)
			}
		}
	}
	return nil
}

// Close stops the server and removes the CA's directory.
func (b *bench) Close() {
	for _, c := range append(b.tokenConns, b.mtlsConns...) {
		c.Close()
	}
	if b.server != nil {
		b.server.Stop()
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// bundleFor returns the bundle that the SVIDs of a phase verify against.
func (b *bench) bundleFor(phase string) x509bundle.Source {
	if phase == phaseBare {
		return b.bare.bundle
	}
	return b.ca
}

// makeCSRs makes n CSRs, each for its own P-256 key, like the ones
// identity.Client sends.
func makeCSRs(n int) ([][]byte, error) {
	csrs := make([][]byte, n)
	for i := range csrs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		if csrs[i], err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key); err != nil {
			return nil, err
		}
	}
	return csrs, nil
}

// bareCA is the baseline: the least any CA must do per SVID, with the
// standard library only. It parses the CSR, checks its self-signature, and
// creates an X509-SVID leaf for the CSR's key, signed with the key of a P-256
// intermediate (the key type tether-ca uses), with a fresh random serial.
// Unlike identity.CA.Sign it does not parse the certificate it made.
type bareCA struct {
	uri      *url.URL
	inter    *x509.Certificate
	interDER []byte
	key      *ecdsa.PrivateKey
	bundle   *x509bundle.Bundle // the root, to verify what it issued
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 127)

func newBareCA(uri *url.URL) (*bareCA, error) {
	now := time.Now()
	tdURI := &url.URL{Scheme: uri.Scheme, Host: uri.Host}
	mk := func(cn string, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey, maxPath int) (*x509.Certificate, error) {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(now.UnixNano()),
			Subject:               pkix.Name{Organization: []string{"bench"}, CommonName: cn},
			NotBefore:             now.Add(-time.Minute),
			NotAfter:              now.Add(30 * 24 * time.Hour),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            maxPath,
			MaxPathLenZero:        maxPath == 0,
			URIs:                  []*url.URL{tdURI},
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
		if err != nil {
			return nil, err
		}
		return x509.ParseCertificate(der)
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	root, err := mk("bench root", nil, nil, rootKey, 1)
	if err != nil {
		return nil, err
	}
	inter, err := mk("bench intermediate", root, rootKey, interKey, 0)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromURI(tdURI)
	if err != nil {
		return nil, err
	}
	return &bareCA{uri: uri, inter: inter, interDER: inter.Raw, key: interKey,
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{root})}, nil
}

// sign returns the DER leaf for csrDER.
func (c *bareCA) sign(csrDER []byte) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{Organization: []string{"bench"}},
		NotBefore:             now.Add(-30 * time.Second),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{c.uri},
	}
	return x509.CreateCertificate(rand.Reader, tmpl, c.inter, csr.PublicKey, c.key)
}

// svidOf parses a DER chain (leaf first) as an SVID's certificates.
func svidOf(chain [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, 0, len(chain))
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("empty chain")
	}
	return certs, nil
}

// checkSVID verifies chain against bundle and checks that it names loadID.
func checkSVID(chain [][]byte, bundle x509bundle.Source) error {
	certs, err := svidOf(chain)
	if err != nil {
		return err
	}
	id, _, err := x509svid.Verify(certs, bundle)
	if err != nil {
		return err
	}
	if id != loadID {
		return fmt.Errorf("SVID names %s, want %s", id, loadID)
	}
	return nil
}
