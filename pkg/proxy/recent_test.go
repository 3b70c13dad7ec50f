package proxy_test

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

func TestRecentDenialsRing(t *testing.T) {
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tick := 0
	now := func() time.Time { tick++; return base.Add(time.Duration(tick) * time.Second) }
	for _, tc := range []struct {
		name      string
		size, add int
		wantKept  int
		wantFirst string // newest
		wantLast  string // oldest kept
	}{
		{"empty", 3, 0, 0, "", ""},
		{"under capacity", 3, 2, 2, "d1", "d0"},
		{"exactly full", 3, 3, 3, "d2", "d0"},
		{"wrapped once", 3, 4, 3, "d3", "d1"},
		{"wrapped many times", 3, 301, 3, "d300", "d298"},
		{"default size", 0, 250, proxy.DefaultRecentDenials, "d249", "d150"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := proxy.NewRecentDenials(tc.size, now)
			for i := range tc.add {
				r.Add(proxy.Denial{Direction: "inbound", Destination: fmt.Sprintf("d%d", i)})
			}
			got, total := r.List()
			if len(got) != tc.wantKept || total != uint64(tc.add) {
				t.Fatalf("kept %d of total %d, want %d of %d", len(got), total, tc.wantKept, tc.add)
			}
			if want := cmp.Or(tc.size, proxy.DefaultRecentDenials); r.Cap() != want {
				t.Errorf("Cap() = %d, want %d", r.Cap(), want)
			}
			if tc.wantKept == 0 {
				return
			}
			if got[0].Destination != tc.wantFirst || got[len(got)-1].Destination != tc.wantLast {
				t.Errorf("newest %s, oldest %s; want %s, %s", got[0].Destination, got[len(got)-1].Destination, tc.wantFirst, tc.wantLast)
			}
			for i := 1; i < len(got); i++ {
				if !got[i-1].Time.After(got[i].Time) {
					t.Fatalf("not newest first at %d: %v then %v", i, got[i-1].Time, got[i].Time)
				}
			}
		})
	}
}

func TestRecentDenialsBoundsFields(t *testing.T) {
	r := proxy.NewRecentDenials(1, nil)
	long := strings.Repeat("é", 2000) // 4000 bytes of two-byte runes
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r.Add(proxy.Denial{Time: at, Direction: long, Source: long, Destination: long, Rule: long, Reason: long})
	got, _ := r.List()
	d := got[0]
	if !d.Time.Equal(at) {
		t.Errorf("a given time was replaced: %v", d.Time)
	}
	for name, s := range map[string]string{"direction": d.Direction, "source": d.Source, "destination": d.Destination, "rule": d.Rule, "reason": d.Reason} {
		if len(s) > 512 || !utf8.ValidString(s) || !strings.HasSuffix(s, "…") {
			t.Errorf("%s: %d bytes, valid UTF-8 %v, ends %q", name, len(s), utf8.ValidString(s), s[max(0, len(s)-6):])
		}
	}
}

func TestRecentDenialsNilAndConcurrent(t *testing.T) {
	var none *proxy.RecentDenials
	none.Add(proxy.Denial{}) // no panic
	if l, n := none.List(); l != nil || n != 0 {
		t.Errorf("nil ring lists %v, %d", l, n)
	}
	r := proxy.NewRecentDenials(10, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				r.Add(proxy.Denial{Source: fmt.Sprint(g), Destination: fmt.Sprint(i)})
				if i%50 == 0 {
					r.List()
				}
			}
		})
	}
	wg.Wait()
	got, total := r.List()
	if len(got) != 10 || total != 4000 {
		t.Errorf("kept %d of %d, want 10 of 4000", len(got), total)
	}
}

// TestDenialsAreKept: the denials the metric counts, in both directions,
// also land in the ring with the rule that decided.
func TestDenialsAreKept(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	inRule := "no AccessPolicy admits " + clientID.String()
	inRing := proxy.NewRecentDenials(5, nil)
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{Denials: inRing, Authorize: func(spiffeid.ID, uint16) error {
		return &proxy.DeniedError{Rule: inRule}
	}})
	outRing := proxy.NewRecentDenials(5, nil)
	outRule := "policy allows no port of default/db"
	out := start(t, proxy.Config{Identity: m.identity(clientID, false), Denials: outRing}, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeOutbound(ctx, l, func(net.Conn) proxy.Route {
			return proxy.Route{Deny: "denied: " + outRule, Target: "default/db:5432", Rule: outRule}
		})
	})
	via := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	for _, addr := range []string{out.addr, via.addr} {
		if c, err := net.Dial("tcp", addr); err == nil {
			roundTrip(c, "x")
			c.Close()
		}
	}
	eventually(t, "both denials to be kept", func() bool {
		a, _ := inRing.List()
		b, _ := outRing.List()
		return len(a) == 1 && len(b) == 1
	})
	a, _ := inRing.List()
	b, _ := outRing.List()
	if d := a[0]; d.Direction != "inbound" || d.Source != clientID.String() || d.Destination != app || d.Rule != inRule || d.Time.IsZero() {
		t.Errorf("inbound denial kept as %+v", d)
	}
	if d := b[0]; d.Direction != "outbound" || d.Source != clientID.String() || d.Destination != "default/db:5432" || d.Rule != outRule || !strings.Contains(d.Reason, outRule) {
		t.Errorf("outbound denial kept as %+v", d)
	}
}
