//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// serveForTest starts a server of mode in the test process and returns its
// address.
func serveForTest(t *testing.T, mode string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		if mode == "tether" {
			done <- serveTether(ctx, "127.0.0.1:0", 200, 10, w)
		} else {
			done <- serveMinimal(ctx, "127.0.0.1:0", w)
		}
		w.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s server: %v", mode, err)
		}
	})
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, r)
	return strings.TrimSpace(line)
}

// Every line of the query file gets the answer a pod expects from its
// sidecar: NXDOMAIN for unreachable services, otherwise the service's
// address (through a CNAME for short names), NODATA for AAAA, SRV records.
func TestQueriesGetMeshAnswers(t *testing.T) {
	addr := serveForTest(t, "tether")
	var q bytes.Buffer
	if err := writeQueries(&q, 400, 200, 10); err != nil {
		t.Fatal(err)
	}
	c := &mdns.Client{Timeout: 2 * time.Second}
	kinds := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(q.String()), "\n") {
		f := strings.Fields(line)
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(f[0]), mdns.StringToType[f[1]])
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		name := strings.TrimPrefix(f[0], "_http._tcp.")
		svc := strings.Split(name, ".")[0]
		var i int
		if _, err := fmt.Sscanf(svc, "svc-%d", &i); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		switch {
		case !reachable(i):
			kinds["nxdomain"]++
			if r.Rcode != mdns.RcodeNameError {
				t.Errorf("%s: rcode %s, want NXDOMAIN (unreachable)", line, mdns.RcodeToString[r.Rcode])
			}
		case r.Rcode != mdns.RcodeSuccess:
			t.Errorf("%s: rcode %s, want NOERROR", line, mdns.RcodeToString[r.Rcode])
		case f[1] == "A":
			kinds["A"]++
			if !hasRR(r.Answer, mdns.TypeA) {
				t.Errorf("%s: no A record in %v", line, r.Answer)
			}
			if strings.Count(f[0], ".") < 4 && !hasRR(r.Answer, mdns.TypeCNAME) {
				t.Errorf("%s: a short name got no CNAME to the full name: %v", line, r.Answer)
			}
		case f[1] == "AAAA":
			kinds["AAAA"]++
			if len(r.Ns) == 0 || hasRR(r.Answer, mdns.TypeAAAA) {
				t.Errorf("%s: want NODATA with an SOA, got %v / %v", line, r.Answer, r.Ns)
			}
		case f[1] == "SRV":
			kinds["SRV"]++
			if !hasRR(r.Answer, mdns.TypeSRV) {
				t.Errorf("%s: no SRV record in %v", line, r.Answer)
			}
		}
	}
	for _, k := range []string{"A", "AAAA", "SRV", "nxdomain"} {
		if kinds[k] == 0 {
			t.Errorf("no %s answer among the queries: %v", k, kinds)
		}
	}
}

func TestMinimalAnswersEverything(t *testing.T) {
	addr := serveForTest(t, "minimal")
	m := new(mdns.Msg)
	m.SetQuestion("anything.example.", mdns.TypeA)
	r, err := mdns.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || !hasRR(r.Answer, mdns.TypeA) {
		t.Fatalf("answer %v, want one A record", r.Answer)
	}
}

func hasRR(rrs []mdns.RR, t uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == t {
			return true
		}
	}
	return false
}
