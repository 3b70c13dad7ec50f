package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tether-mesh/tether/internal/procstat"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// The server child: `discoveryscale serve` builds the registry of a scale
// (the same generator as the parent, so both hold the same State), times
// Registry.Update and BuildResources, then serves ADS with an xds.Server
// on loopback with mTLS. It reads commands on stdin, one per line, and
// answers each with one JSON line on stdout:
//
//	mem                 GC, then the memory figures (memReport)
//	change KIND N       apply change N of KIND and time Registry.Update
//	quit                stop serving and exit

// serveConfig is the server child's configuration.
type serveConfig struct {
	Scale       Scale
	Cert, Key   string // the server's SVID (PEM chain, PKCS#8 key)
	Bundle      string // the trust bundle (PEM)
	BuildRounds int    // Registry.Update timings
	BuildNodes  int    // BuildResources timings (sample of clients)
	CPUProfile  string // profile from the first change to quit
	MemProfile  string // heap profile at the first mem after clients connected
}

// ready is the server child's first line: the address and the timings
// taken before serving.
type ready struct {
	Addr         string          `json:"addr"`
	Update       []time.Duration `json:"update"`        // Registry.Update of the whole State
	BuildNode    []time.Duration `json:"build_node"`    // BuildResources for one client
	BuildCounts  [4]int          `json:"build_counts"`  // median client's clusters, CLAs, listeners, name table services
	NameTableLen int             `json:"nametable_len"` // bytes of that client's name-table entries
}

// memReport is the answer to mem.
type memReport struct {
	HeapAlloc  uint64 `json:"heap_alloc"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	RSS        int64  `json:"rss"`
	HWM        int64  `json:"hwm"`
	Goroutines int    `json:"goroutines"`
}

// changeReport is the answer to change: wall-clock times (Unix ns) just
// before Registry.Update was called and after it returned.
type changeReport struct {
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Err   string `json:"err,omitempty"`
}

func serveMain(args []string) int {
	var c serveConfig
	fs := flag.NewFlagSet("discoveryscale serve", flag.ContinueOnError)
	fs.IntVar(&c.Scale.Services, "services", 0, "")
	fs.IntVar(&c.Scale.Namespaces, "namespaces", 0, "")
	fs.IntVar(&c.Scale.EndpointsPer, "endpoints-per", 0, "")
	fs.IntVar(&c.Scale.Policies, "policies", 0, "")
	fs.IntVar(&c.Scale.Clients, "clients", 0, "")
	fs.StringVar(&c.Cert, "cert", "", "")
	fs.StringVar(&c.Key, "key", "", "")
	fs.StringVar(&c.Bundle, "bundle", "", "")
	fs.IntVar(&c.BuildRounds, "build-rounds", 5, "")
	fs.IntVar(&c.BuildNodes, "build-nodes", 20, "")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "")
	fs.StringVar(&c.MemProfile, "memprofile", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := serve(c, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "discoveryscale serve:", err)
		return 1
	}
	return 0
}

func serve(c serveConfig, in io.Reader, out io.Writer) error {
	m := generate(c.Scale)
	reg, err := discovery.NewRegistry(trustDomain, policy.AllowMesh)
	if err != nil {
		return err
	}
	var rd ready
	for range max(1, c.BuildRounds) {
		start := time.Now()
		if err := reg.Update(m.state); err != nil {
			return fmt.Errorf("registry update: %w", err)
		}
		rd.Update = append(rd.Update, time.Since(start))
	}
	if err := timeBuild(&rd, m, reg.Snapshot(), c.BuildNodes); err != nil {
		return err
	}

	svid, err := x509svid.Load(c.Cert, c.Key)
	if err != nil {
		return fmt.Errorf("server SVID: %w", err)
	}
	bundle, err := x509bundle.Load(trustDomain, c.Bundle)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	g := grpc.NewServer(append(xds.GRPCServerOptions(), grpc.Creds(credentials.NewTLS(
		tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(trustDomain)))))...)
	srv := &xds.Server{Registry: reg, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); g.Serve(l) }()
	go func() { defer wg.Done(); srv.Run(ctx) }()
	defer func() {
		cancel()
		g.Stop()
		wg.Wait()
	}()

	rd.Addr = l.Addr().String()
	enc := json.NewEncoder(out)
	if err := enc.Encode(rd); err != nil {
		return err
	}
	var memProfiled bool
	var profile *os.File
	defer func() {
		if profile != nil {
			pprof.StopCPUProfile()
			profile.Close()
		}
	}()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var reply any
		switch f[0] {
		case "mem":
			rep := readMem()
			if c.MemProfile != "" && !memProfiled && f[len(f)-1] == "serving" {
				memProfiled = true
				if err := writeHeapProfile(c.MemProfile); err != nil {
					return err
				}
			}
			reply = rep
		case "change":
			if len(f) != 3 {
				return fmt.Errorf("bad command %q", sc.Text())
			}
			n, err := strconv.Atoi(f[2])
			if err != nil {
				return fmt.Errorf("bad command %q", sc.Text())
			}
			if c.CPUProfile != "" && profile == nil {
				pf, err := os.Create(c.CPUProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(pf); err != nil {
					pf.Close()
					return err
				}
				profile = pf
			}
			var rep changeReport
			if _, err := m.apply(f[1], n); err != nil {
				rep.Err = err.Error()
			} else {
				rep.Start = time.Now().UnixNano()
				err := reg.Update(m.state)
				rep.End = time.Now().UnixNano()
				if err != nil {
					rep.Err = err.Error()
				}
			}
			reply = rep
		case "quit":
			return nil
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		if err := enc.Encode(reply); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("stdin closed without quit")
}

// timeBuild times BuildResources for up to n clients spread over the
// client list, and records the median one's resource counts.
func timeBuild(rd *ready, m *mesh, snap *discovery.Snapshot, n int) error {
	type sample struct {
		d      time.Duration
		counts [4]int
		ntLen  int
	}
	var samples []sample
	for k := range min(n, len(m.clients)) {
		j := k * len(m.clients) / max(1, min(n, len(m.clients)))
		id := m.clientID(j)
		start := time.Now()
		res, err := xds.BuildResources(snap, id, "")
		d := time.Since(start)
		if err != nil {
			return fmt.Errorf("BuildResources(%s): %w", id, err)
		}
		s := sample{d: d, counts: [4]int{len(res[typeCDS]), len(res[typeEDS]), len(res[typeLDS])}}
		if nt, ok := nameTableOf(res[typeECDS]); ok {
			s.counts[3] = len(nt.Services)
		}
		for _, r := range res[typeECDS] {
			s.ntLen += protoSize(r) // every entry, as sent
		}
		samples = append(samples, s)
		rd.BuildNode = append(rd.BuildNode, d)
	}
	if len(samples) == 0 {
		return nil
	}
	slices.SortFunc(samples, func(a, b sample) int { return int(a.d - b.d) })
	mid := samples[len(samples)/2]
	rd.BuildCounts, rd.NameTableLen = mid.counts, mid.ntLen
	return nil
}

func readMem() memReport {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep := memReport{HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Sys: ms.Sys,
		Goroutines: runtime.NumGoroutine()}
	if pm, err := procstat.Memory(os.Getpid()); err == nil {
		rep.RSS, rep.HWM = pm.RSS, pm.HWM
	}
	return rep
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.WriteHeapProfile(f)
}
