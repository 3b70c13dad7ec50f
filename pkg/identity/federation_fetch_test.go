package identity_test

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// hostileEndpoint serves h over https_web on loopback and returns a
// Federator following it for b.example (fetch timeout 2s, the test
// federator's), the registry of its metrics, the initial bundle and the
// endpoint's URL.
func hostileEndpoint(t *testing.T, h http.HandlerFunc) (*identity.Federator, *prometheus.Registry, *spiffebundle.Bundle, string) {
	t.Helper()
	b := tdCA(t, "b.example")
	url, pool := serveWebTLS(t, h)
	reg := prometheus.NewRegistry()
	f := newFederator(t, reg)
	initial := spiffebundle.FromX509Authorities(b.TrustDomain(), b.Bundle().Bundle.X509Authorities())
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: b.TrustDomain(), URL: url, Profile: identity.ProfileHTTPSWeb, WebRoots: pool, Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	return f, reg, initial, url
}

// lastError waits for the Federator's first failed fetch and returns its
// error.
func lastError(t *testing.T, f *identity.Federator, within time.Duration) string {
	t.Helper()
	var e string
	tu.Eventually(t, "a failed fetch", within, func() bool {
		e = f.Status()[0].LastError
		return e != ""
	})
	return e
}

// TestFederatorRefusesHTTPErrorStatus: an endpoint answering 500 with a
// good, newer bundle in the body (a proxy's error page could be anything)
// is refused: the answer of a failing endpoint is not a bundle.
func TestFederatorRefusesHTTPErrorStatus(t *testing.T) {
	c := tdCA(t, "b.example")
	var body atomic.Pointer[[]byte]
	f, reg, initial, url := hostileEndpoint(t, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write(*body.Load())
	})
	// The body is b.example's real bundle, with a higher sequence number.
	doc, err := bundleOf(c, time.Second, 9).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	body.Store(&doc)
	e := lastError(t, f, 5*time.Second)
	t.Logf("refused: %s", e)
	for _, want := range []string{url, "500 Internal Server Error", "not 200 OK"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if n, _ := held(f, initial.TrustDomain()).SequenceNumber(); n == 9 || !held(f, initial.TrustDomain()).Equal(initial) {
		t.Error("the bundle of a 500 answer replaced the initial one")
	}
	if got := refreshes(reg, "b.example", "error"); got < 1 {
		t.Errorf("refreshes{result=error} = %v", got)
	}
}

// TestFederatorBoundsBundleBody: an endpoint sending an endless body is
// cut off at identity.MaxBundleBytes, with an error saying so, long before
// the fetch timeout; the client reads (and holds) no more than the bound.
// The endpoint stops by itself 8 MiB past the bound, so that a client
// without the bound fails the test instead of eating the machine's memory.
func TestFederatorBoundsBundleBody(t *testing.T) {
	const slack = 8 << 20 // socket buffers between the endpoint and the client
	var written, overflows atomic.Int64
	chunk := []byte(`{"keys":[` + strings.Repeat(" ", 32<<10))
	f, _, initial, url := hostileEndpoint(t, func(w http.ResponseWriter, _ *http.Request) {
		var n int64
		for n <= identity.MaxBundleBytes+slack {
			m, err := w.Write(chunk)
			n += int64(m)
			written.Add(int64(m))
			if err != nil {
				return // the client hung up: what the bound should do
			}
		}
		overflows.Add(1)
	})
	start := time.Now()
	e := lastError(t, f, 10*time.Second)
	took := time.Since(start)
	t.Logf("refused after %v, %d bytes written by the endpoint: %s", took.Round(time.Millisecond), written.Load(), e)
	if overflows.Load() > 0 {
		t.Errorf("the client read more than %d bytes past the bound of %d", slack, identity.MaxBundleBytes)
	}
	for _, want := range []string{url, "more than 1048576 bytes"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if took >= 2*time.Second {
		t.Errorf("the fetch ended after %v: by the timeout, not by the bound", took)
	}
	if !held(f, initial.TrustDomain()).Equal(initial) {
		t.Error("the held bundle changed")
	}
}

// TestFederatorFetchTimesOutSlowLoris: an endpoint that answers 200 and
// then sends a byte now and then, forever, is given up on at the fetch
// timeout (2s here), with an error saying so.
func TestFederatorFetchTimesOutSlowLoris(t *testing.T) {
	f, _, initial, url := hostileEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"keys":[`))
		for {
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := w.Write([]byte(" ")); err != nil {
				return
			}
		}
	})
	start := time.Now()
	e := lastError(t, f, 10*time.Second)
	took := time.Since(start)
	t.Logf("given up after %v: %s", took.Round(time.Millisecond), e)
	for _, want := range []string{url, "no complete answer within 2s"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if took > 5*time.Second {
		t.Errorf("the slow endpoint held the fetch %v", took)
	}
	if !held(f, initial.TrustDomain()).Equal(initial) {
		t.Error("the held bundle changed")
	}
}

// TestFederatorRefusesPlaintextRedirect: an endpoint redirecting to an
// http:// URL is not followed (a bundle fetched in plaintext could be
// anyone's), though the plaintext server would serve a good bundle.
func TestFederatorRefusesPlaintextRedirect(t *testing.T) {
	c := tdCA(t, "b.example")
	doc, err := bundleOf(c, time.Second, 9).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var plainHits atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		plainHits.Add(1)
		_, _ = w.Write(doc)
	}))
	t.Cleanup(plain.Close)
	f, _, initial, url := hostileEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/bundle", http.StatusFound)
	})
	e := lastError(t, f, 5*time.Second)
	t.Logf("refused: %s", e)
	for _, want := range []string{url, "redirected to " + plain.URL + "/bundle", "plaintext"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if plainHits.Load() != 0 {
		t.Errorf("the plaintext server was asked %d times", plainHits.Load())
	}
	if !held(f, initial.TrustDomain()).Equal(initial) {
		t.Error("the held bundle changed")
	}
}

// TestFederatorBoundsDecompressedBody: a gzip answer of a few KiB that
// expands to 64 MiB (net/http asks for gzip and decompresses it) is cut
// off at identity.MaxBundleBytes of decompressed bytes.
func TestFederatorBoundsDecompressedBody(t *testing.T) {
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	_, _ = zw.Write([]byte(`{"keys":[`))
	_, _ = zw.Write(bytes.Repeat([]byte(" "), 64<<20))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f, _, initial, url := hostileEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(bomb.Bytes())
	})
	e := lastError(t, f, 10*time.Second)
	t.Logf("refused (%d compressed bytes): %s", bomb.Len(), e)
	for _, want := range []string{url, "more than 1048576 bytes"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if !held(f, initial.TrustDomain()).Equal(initial) {
		t.Error("the held bundle changed")
	}
}

// TestFederatorSPIFFERedirectNeedsEndpointID: an https_spiffe endpoint
// redirecting to another server is followed only if that server presents
// the endpoint ID too: one with another SVID of the same trust domain,
// serving a newer bundle, is refused.
func TestFederatorSPIFFERedirectNeedsEndpointID(t *testing.T) {
	b := tdCA(t, "b.example")
	btd := b.TrustDomain()
	endpointID := spiffeid.RequireFromPath(btd, "/spire/server")
	doc, err := bundleOf(b, time.Second, 9).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var otherHits atomic.Int64
	other := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		otherHits.Add(1)
		_, _ = w.Write(doc)
	}), tlsconfig.TLSServerConfig(svidOf(t, b, spiffeid.RequireFromPath(btd, "/ns/evil/sa/x"))))
	url := serveTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other+"/bundle", http.StatusFound)
	}), tlsconfig.TLSServerConfig(svidOf(t, b, endpointID)))
	f := newFederator(t, prometheus.NewRegistry())
	initial := spiffebundle.FromX509Authorities(btd, b.Bundle().Bundle.X509Authorities())
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: btd, URL: url, Profile: identity.ProfileHTTPSSPIFFE, EndpointID: endpointID, Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	e := lastError(t, f, 5*time.Second)
	t.Logf("refused: %s", e)
	for _, want := range []string{url, other + "/bundle", "spiffe://b.example/ns/evil/sa/x"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not say %q", e, want)
		}
	}
	if otherHits.Load() != 0 {
		t.Errorf("the server with another SPIFFE ID was asked %d times", otherHits.Load())
	}
	if !held(f, btd).Equal(initial) {
		t.Error("the held bundle changed")
	}
}
