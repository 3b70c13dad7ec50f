// Package testutil holds what Tether's tests share: a fake clock and a test
// CA on a temporary disk store.
package testutil

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/identity"
)

// FakeClock is a clock that moves only when told to.
type FakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewFakeClock starts at a fixed, round time.
func NewFakeClock() *FakeClock {
	return &FakeClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
}

// Now implements identity.Clock.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock forward by d.
func (c *FakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// TrustDomain is the trust domain of test CAs.
var TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

// ID returns a SPIFFE ID in TrustDomain.
func ID(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(TrustDomain, path)
}

// NewCA returns a CA on a disk store in a temporary directory, driven by
// clock (a new FakeClock if nil). mod may adjust the config.
func NewCA(t testing.TB, clock identity.Clock, mod func(*identity.Config)) *identity.CA {
	t.Helper()
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if clock == nil {
		clock = NewFakeClock()
	}
	cfg := identity.Config{TrustDomain: TrustDomain, Store: store, Clock: clock}
	if mod != nil {
		mod(&cfg)
	}
	ca, err := identity.NewCA(context.Background(), cfg)
	if err != nil {
		t.Fatalf("new test CA: %v", err)
	}
	return ca
}

// NewCSR returns a DER CSR for key (a new P-256 key if nil) with tmpl's
// names (an empty template if nil).
func NewCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) ([]byte, crypto.Signer) {
	t.Helper()
	if key == nil {
		k, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// Eventually polls cond every 10ms and fails the test if it is not true
// within timeout.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ClosedWithin reports whether the far end closes c within d (reading and
// discarding what it sends until then).
func ClosedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !errors.As(err, &ne) || !ne.Timeout()
		}
	}
}

// EchoServer serves a TCP echo app on loopback until the test ends and
// returns its address. With a banner it speaks first, like SMTP or MySQL.
func EchoServer(t testing.TB, banner string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, l, func(c net.Conn) {
		go func() {
			defer c.Close()
			if banner != "" {
				io.WriteString(c, banner)
			}
			io.Copy(c, c)
		}()
	})
	return l.Addr().String()
}

// Serve closes l when the test ends and, until then, calls handle with
// every connection l accepts, one at a time, in a goroutine of its own.
// A handle that serves for long starts a goroutine.
func Serve(t testing.TB, l net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
}

// Go runs run in a goroutine until the test ends, when its context is
// cancelled and run is waited for; the returned cancel stops it sooner.
// What run returns is ignored.
func Go(t testing.TB, run func(context.Context) error) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel
}

// Start calls start with a context that ends with the test, and runs run
// on what it returned and that context in a goroutine until the test ends,
// when the context is cancelled, run is waited for and an error it returns
// fails the test, after what. An error from start fails the test at once.
func Start[T any](t testing.TB, what string, start func(context.Context) (T, error), run func(T, context.Context) error) T {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := start(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run(s, ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	return s
}
