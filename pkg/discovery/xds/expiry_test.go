package xds_test

import (
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/internal/testutil"
)

// An ADS stream, state-of-the-world or delta, does not outlive the client
// certificate it was opened with: it is cut with Unauthenticated when the
// certificate expires, although the client keeps it busy.
func TestStreamCutWhenClientCertExpires(t *testing.T) {
	const life = 1500 * time.Millisecond
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	m, _ := newNodesMesh(t, clock) // its own SVID is issued now, for an hour
	// The CA issues hour-long SVIDs: issue web's as if an hour ago, so
	// that it expires life from now.
	shortLived := func() time.Time {
		clock.Set(time.Now().Add(-time.Hour + life))
		return clock.Now().Add(time.Hour).Truncate(time.Second) // x509 keeps seconds
	}

	t.Run("sotw", func(t *testing.T) {
		notAfter := shortLived()
		c := m.connect(webID, webID.String())
		v := c.subscribe()
		// Keep asking (re-ACKing) until the stream ends.
		deadline := time.After(life + 3*time.Second)
		for {
			select {
			case err := <-c.err:
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("stream ended with %v, want Unauthenticated", err)
				}
				if d := time.Since(notAfter); d < -200*time.Millisecond || d > 2*time.Second {
					t.Errorf("stream cut %s after the certificate expired", d)
				}
				t.Logf("cut: %v", err)
				return
			case <-c.resps:
			case <-deadline:
				t.Fatalf("stream still open %s after its client certificate expired", time.Since(notAfter))
			case <-time.After(200 * time.Millisecond):
				c.send(resource.ClusterType, nil, v[resource.ClusterType])
			}
		}
	})
	t.Run("delta", func(t *testing.T) {
		notAfter := shortLived()
		c := m.connectDelta(webID)
		c.subscribe()
		err := streamEnd(c, life+3*time.Second)
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("stream end = %v after %s, want Unauthenticated", err, time.Since(notAfter))
		}
		if d := time.Since(notAfter); d < -200*time.Millisecond || d > 2*time.Second {
			t.Errorf("stream cut %s after the certificate expired", d)
		}
	})
}
