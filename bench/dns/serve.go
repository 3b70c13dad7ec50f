//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"

	mdns "github.com/miekg/dns"

	"github.com/tether-mesh/tether/pkg/proxy/dns"
)

// The mesh the tether server answers for.
const (
	defaultServices   = 2000
	defaultNamespaces = 40
	clusterDomain     = "cluster.local"
	podNamespace      = "team-000" // the namespace of the pod the sidecar serves
)

func nsName(i int) string  { return fmt.Sprintf("team-%03d", i) }
func svcName(i int) string { return fmt.Sprintf("svc-%04d", i) }

// svc i is in namespace i mod namespaces; every tenth is unreachable.
func fqdn(i, namespaces int) string {
	return svcName(i) + "." + nsName(i%namespaces) + ".svc." + clusterDomain + "."
}

func reachable(i int) bool { return i%10 != 9 }

// meshTable is what discovery would give a pod: every service with its
// cluster IP and ports.
func meshTable(services, namespaces int) *dns.StaticTable {
	recs := make(map[string]dns.Record, services)
	for i := range services {
		recs[fqdn(i, namespaces)] = dns.Record{
			Addrs:     []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:     []dns.SRVPort{{Name: "http", Proto: "tcp", Port: 80}, {Name: "grpc", Proto: "tcp", Port: 9090}},
			Reachable: reachable(i),
		}
	}
	return dns.NewStaticTable(recs)
}

// podSearch is a Kubernetes pod's resolv.conf search list.
var podSearch = []string{podNamespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}

func serveMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dnsbench serve", flag.ContinueOnError)
	mode := fs.String("mode", "tether", "tether or minimal")
	listen := fs.String("listen", "127.0.0.1:0", "UDP address")
	services := fs.Int("services", defaultServices, "mesh services in the table (tether)")
	namespaces := fs.Int("namespaces", defaultNamespaces, "namespaces they are spread over (tether)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *mode {
	case "tether":
		return serveTether(ctx, *listen, *services, *namespaces, os.Stdout)
	case "minimal":
		return serveMinimal(ctx, *listen, os.Stdout)
	}
	return fmt.Errorf("unknown -mode %q: tether or minimal", *mode)
}

// serveTether runs the sidecar's DNS server as the sidecar configures it
// (search rules from the pod, ndots 5, metrics counted), with no logging
// below Warn. The upstream is never asked: every query is a mesh name.
func serveTether(ctx context.Context, listen string, services, namespaces int, out io.Writer) error {
	srv, err := dns.New(dns.Config{
		Listen:    listen,
		Search:    podSearch,
		Ndots:     5,
		Upstreams: []string{"127.0.0.1:9"},
		Table:     meshTable(services, namespaces),
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		fmt.Fprintln(out, srv.Addr())
	case err := <-errc:
		return err
	}
	return <-errc
}

// fixedA is the minimal server's only answer.
var fixedA = netip.MustParseAddr("10.96.0.1").AsSlice()

// serveMinimal is the least a miekg/dns server can do: answer every
// question with one A record.
func serveMinimal(ctx context.Context, listen string, out io.Writer) error {
	pc, err := net.ListenPacket("udp", listen)
	if err != nil {
		return err
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = []mdns.RR{&mdns.A{
				Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 5},
				A:   fixedA,
			}}
		}
		w.WriteMsg(m)
	})
	srv := &mdns.Server{PacketConn: pc, Net: "udp", Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
		fmt.Fprintln(out, pc.LocalAddr().String())
	case err := <-errc:
		return err
	}
	select {
	case <-ctx.Done():
		srv.Shutdown()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	}
}
