// Command cabench floods a real tether-ca process with idle
// unauthenticated connections and measures its memory and the issuance of
// a legitimate caller meanwhile (docs/BENCHMARKS.md, "CA under
// unauthenticated load"). bench/ca/run.sh builds and runs it.
//
// Each attacker slot connects, completes a TLS handshake without a client
// certificate (every other slot) or sends nothing at all, holds the
// connection until the CA closes it, waits -reconnect and connects again,
// for the whole run. A legitimate caller bootstraps an SVID with a join
// token over a new connection every -interval. The CA's resident memory is
// read from /proc. With -baseline-bin, an older tether-ca (built by
// bench/proxy/build-base.sh REV DIR tether-ca tether) runs the same
// scenarios in the same rounds. The attackers run in -workers child
// processes (workers.go).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/freeport"
	"github.com/tether-mesh/tether/internal/procstat"
	"github.com/tether-mesh/tether/pkg/identity"
)

type config struct {
	bin, baseBin  string
	conns         int
	sources       []int // loopback source addresses per scenario (127.0.0.2 …)
	hold          time.Duration
	reconnect     time.Duration
	interval      time.Duration
	rounds        int
	dialers       int
	caArgs        []string
	memLimitBytes int64
	workers       int
	addr          string // -worker only
	first         int    // -worker only
}

func main() {
	var c config
	sources := flag.String("sources", "8,1", "scenarios: number of loopback source addresses the attackers use, comma-separated")
	caArgs := flag.String("ca-args", "", "extra flags for the current tether-ca (space-separated), e.g. \"--max-conns 4096\"")
	flag.StringVar(&c.bin, "bin", "", "directory with tether-ca and tether (the current build)")
	flag.StringVar(&c.baseBin, "baseline-bin", "", "directory with an older tether-ca and tether, run side by side")
	flag.IntVar(&c.conns, "conns", 20000, "attacker connections (slots)")
	flag.DurationVar(&c.hold, "hold", 20*time.Second, "how long the flood is held after it has ramped up")
	flag.DurationVar(&c.reconnect, "reconnect", 2*time.Second, "how long an attacker slot waits after the CA closed it")
	flag.DurationVar(&c.interval, "interval", 200*time.Millisecond, "time between two legitimate issuances")
	flag.IntVar(&c.rounds, "rounds", 1, "rounds (each runs every scenario on every build)")
	flag.IntVar(&c.dialers, "dialers", 512, "attacker connections being opened at once")
	memLimit := flag.Int("mem-limit-mib", 256, "the CA's memory limit in the manifests, for the report")
	flag.IntVar(&c.workers, "workers", 3, "attacker processes (each holds at most its open-file limit of connections)")
	worker := flag.Bool("worker", false, "internal: run as an attacker process (see attackerMain)")
	flag.StringVar(&c.addr, "addr", "", "internal: the CA's address, for -worker")
	flag.IntVar(&c.first, "first", 0, "internal: the first slot of this -worker")
	flag.Parse()
	if *worker {
		if err := attackerMain(c, *sources); err != nil {
			fail(err)
		}
		return
	}
	if c.bin == "" {
		fail(errors.New("-bin is required (bench/ca/run.sh sets it)"))
	}
	for _, s := range strings.Split(*sources, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 250 {
			fail(fmt.Errorf("-sources %q: want numbers from 1 to 250", *sources))
		}
		c.sources = append(c.sources, n)
	}
	c.caArgs = strings.Fields(*caArgs)
	c.memLimitBytes = int64(*memLimit) << 20
	if err := raiseNofile(); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cabench:", err)
	os.Exit(1)
}

// raiseNofile raises this process's open-file limit to its hard limit (the
// CA and the attacker processes inherit it): each holds one descriptor per
// connection.
func raiseNofile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	l.Cur = l.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

// result is one scenario on one build.
type result struct {
	build     string
	sources   int
	peakRSS   int64   // VmHWM of the CA
	rssMedian int64   // median RSS during the hold
	heldMed   float64 // attacker connections open (median during the hold)
	heldMax   int64
	attempts  int64 // attacker connects
	ok, tried int
	lat       []time.Duration // of the successful issuances
	refused   string          // tether_ca_connections_refused_total, if the CA has it
}

func run(ctx context.Context, c config) error {
	builds := [][2]string{{"tether", c.bin}}
	if c.baseBin != "" {
		builds = append(builds, [2]string{"tether-base", c.baseBin})
	}
	var results []result
	for round := 1; round <= c.rounds; round++ {
		for _, n := range c.sources {
			for _, b := range builds {
				fmt.Fprintf(os.Stderr, "cabench: round %d, %d source(s), %s\n", round, n, b[0])
				r, err := scenario(ctx, c, b[0], b[1], n)
				if err != nil {
					return fmt.Errorf("%s, %d source(s): %w", b[0], n, err)
				}
				results = append(results, r)
			}
		}
	}
	report(os.Stdout, c, results)
	return nil
}

// startCA starts tether-ca from bin with a fresh directory store and
// returns it once its bundle and admin socket exist.
func startCA(ctx context.Context, dir, bin string, extra []string) (*exec.Cmd, string, string, error) {
	ports, err := freeport.Ports(2)
	if err != nil {
		return nil, "", "", err
	}
	addr, admin := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	logf, err := os.Create(filepath.Join(dir, "tether-ca.log"))
	if err != nil {
		return nil, "", "", err
	}
	defer logf.Close()
	args := append([]string{"--store-dir", filepath.Join(dir, "store"), "--listen", addr, "--admin-listen", admin, "--log-level", "warn"}, extra...)
	cmd := exec.Command(filepath.Join(bin, "tether-ca"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	procstat.DieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, "", "", err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, e1 := os.Stat(filepath.Join(dir, "store", "admin.sock"))
		_, e2 := os.Stat(filepath.Join(dir, "store", "bundle.pem"))
		if e1 == nil && e2 == nil {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				return cmd, addr, admin, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopCmd(cmd)
			b, _ := os.ReadFile(logf.Name())
			return nil, "", "", fmt.Errorf("tether-ca did not start in 30s: %s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopCmd(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func scenario(ctx context.Context, c config, build, bin string, sources int) (result, error) {
	r := result{build: build, sources: sources}
	dir, err := os.MkdirTemp("", "cabench-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	var extra []string
	if build == "tether" {
		extra = c.caArgs
	}
	cmd, addr, admin, err := startCA(ctx, dir, bin, extra)
	if err != nil {
		return r, err
	}
	defer stopCmd(cmd)
	store := filepath.Join(dir, "store")
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "tether"), "ca", "token", "create", "--socket", filepath.Join(store, "admin.sock"),
		"--spiffe-id", "spiffe://cluster.local/ns/bench/sa/legit", "--ttl", "2h", "--reusable").Output()
	if err != nil {
		return r, fmt.Errorf("tether ca token create: %w", err)
	}
	token := strings.TrimSpace(string(out))
	bundle, err := identity.LoadBundlePEM(filepath.Join(store, "bundle.pem"), "cluster.local")
	if err != nil {
		return r, err
	}
	// One issuance before the flood, so that its cost is not in the figures.
	if _, err := issue(ctx, addr, bundle, token); err != nil {
		return r, fmt.Errorf("issuance before the flood: %w", err)
	}

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	flood, err := startAttackers(c, addr, sources)
	if err != nil {
		return r, err
	}
	defer flood.stop()
	// Legitimate issuance through ramp-up and hold.
	var lmu sync.Mutex
	legitDone := make(chan struct{})
	go func() {
		defer close(legitDone)
		t := time.NewTicker(c.interval)
		defer t.Stop()
		for {
			select {
			case <-fctx.Done():
				return
			case <-t.C:
			}
			d, err := issue(fctx, addr, bundle, token)
			if fctx.Err() != nil {
				return
			}
			lmu.Lock()
			r.tried++
			if err == nil {
				r.ok++
				r.lat = append(r.lat, d)
			}
			lmu.Unlock()
		}
	}()
	// Ramp-up: until every slot has connected once (or 60s).
	for deadline := time.Now().Add(60 * time.Second); flood.attempts() < int64(c.conns) && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(100 * time.Millisecond)
	}
	var rss []int64
	var held []float64
	end := time.Now().Add(c.hold)
	for time.Now().Before(end) && ctx.Err() == nil {
		if m, err := procstat.Memory(cmd.Process.Pid); err == nil {
			rss = append(rss, m.RSS)
		}
		n := flood.open()
		held = append(held, float64(n))
		r.heldMax = max(r.heldMax, n)
		time.Sleep(250 * time.Millisecond)
	}
	if m, err := procstat.Memory(cmd.Process.Pid); err == nil {
		r.peakRSS = m.HWM
	}
	r.refused = refusedMetric(admin)
	cancel()
	<-legitDone
	r.attempts = flood.attempts()
	flood.stop()
	slices.Sort(rss)
	if len(rss) > 0 {
		r.rssMedian = rss[len(rss)/2]
	}
	slices.Sort(held)
	if len(held) > 0 {
		r.heldMed = held[len(held)/2]
	}
	return r, ctx.Err()
}

// attacker holds one connection slot until ctx ends.
func attacker(ctx context.Context, addr string, src net.IP, handshake bool, reconnect time.Duration, sem chan struct{}, open, attempts *atomic.Int64) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
	for ctx.Err() == nil {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		attempts.Add(1)
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil && handshake {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) // the attacker does not care who answers
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err = tc.HandshakeContext(ctx); err == nil {
				tc.SetDeadline(time.Time{})
				c = tc
			} else {
				c.Close()
			}
		}
		<-sem
		if err == nil {
			open.Add(1)
			stop := context.AfterFunc(ctx, func() { c.Close() })
			io.Copy(io.Discard, c) // until the CA closes it
			stop()
			c.Close()
			open.Add(-1)
		}
		select {
		case <-ctx.Done():
		case <-time.After(reconnect):
		}
	}
}

// issue bootstraps one SVID over a new connection.
func issue(ctx context.Context, addr string, bundle *x509bundle.Bundle, token string) (time.Duration, error) {
	start := time.Now()
	cl, err := identity.Dial(addr, bundle.TrustDomain(), bundle, nil)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := cl.FetchSVID(ctx, &cav1.Credential{Kind: identity.KindJoinToken, Token: token}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

var refusedRE = regexp.MustCompile(`(?m)^tether_ca_connections_refused_total\{reason="(\w+)"\} (\S+)$`)

// refusedMetric summarizes tether_ca_connections_refused_total, or "—"
// for a CA without it.
func refusedMetric(admin string) string {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return "—"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(bufio.NewReader(resp.Body))
	var parts []string
	for _, m := range refusedRE.FindAllSubmatch(b, -1) {
		if !bytes.Equal(m[2], []byte("0")) {
			parts = append(parts, fmt.Sprintf("%s %s", m[1], m[2]))
		}
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}
