package sidecar

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/logging"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// ProjectedTokenPath is where the injector mounts the projected token.
const ProjectedTokenPath = "/var/run/secrets/tether/token"

// ParseFlags turns tether-sidecar's command line into a validated Config.
func ParseFlags(args []string, getenv func(string) string) (Config, error) {
	c := Config{Allow: proxy.AllowList{}}
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("tether-sidecar", flag.ContinueOnError)
	fs.StringVar(&c.TrustDomain, "trust-domain", env("TETHER_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (env TETHER_TRUST_DOMAIN)")
	fs.StringVar(&c.CAAddr, "ca", env("TETHER_CA_ADDR", "tether-ca.tether-system.svc:8443"), "tether-ca address (env TETHER_CA_ADDR)")
	fs.StringVar(&c.BundleFile, "bundle", "/etc/tether/bundle/bundle.pem", "PEM trust bundle that verifies the CA at bootstrap")
	fs.StringVar(&c.JoinToken, "join-token", getenv("TETHER_JOIN_TOKEN"), "join token (standalone; env TETHER_JOIN_TOKEN)")
	fs.StringVar(&c.TokenFile, "token-file", "", "projected ServiceAccount token (default "+ProjectedTokenPath+" when it exists and no join token is given)")
	fs.StringVar(&c.AdminAddr, "admin-listen", ":15020", "admin address: /healthz/ready, /metrics, /debug/identity, POST /quitquitquit")
	fs.StringVar(&c.WorkloadSocket, "workload-socket", "/run/tether/workload.sock", "SPIFFE Workload API unix socket (empty: off)")
	fs.Func("inbound", "explicit inbound listener LISTEN=APP, e.g. 127.0.0.1:15006=127.0.0.1:8080 (repeatable)", func(v string) error {
		l, app, ok := strings.Cut(v, "=")
		if !ok || l == "" || app == "" {
			return fmt.Errorf("want LISTEN=APP, got %q", v)
		}
		c.Inbound = append(c.Inbound, InboundListener{Listen: l, App: app})
		return nil
	})
	fs.Func("outbound", "explicit outbound listener LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...], e.g. 127.0.0.1:9000=127.0.0.1:16006@spiffe://cluster.local/ns/default/sa/web (repeatable)", func(v string) error {
		o, err := ParseOutbound(v)
		if err != nil {
			return err
		}
		c.Outbound = append(c.Outbound, o)
		return nil
	})
	fs.Func("allow", "allow a caller inbound: SPIFFE_ID or SPIFFE_ID=PORT[,PORT] (repeatable; none: every peer of the trust domain)", c.Allow.ParseAllow)
	transparent := fs.Bool("transparent", false, "serve the capture listeners that `tether-sidecar init` redirects the pod's traffic to")
	t := Transparent{Endpoints: map[netip.AddrPort][]spiffeid.ID{}}
	fs.StringVar(&t.InboundAddr, "capture-inbound-listen", ":15006", "transparent mode: inbound capture listener")
	fs.StringVar(&t.OutboundAddr, "capture-outbound-listen", "127.0.0.1:15001", "transparent mode: outbound capture listener (loopback only: on the pod IP it would be an open proxy with the pod's identity)")
	fs.StringVar(&t.OutboundMode, "outbound-mode", env("TETHER_OUTBOUND_MODE", Passthrough), "transparent mode, destinations outside the mesh: passthrough or registry-only")
	fs.Func("mesh-endpoint", "transparent mode: a mesh endpoint and who serves it, IP:PORT=SPIFFE_ID[,SPIFFE_ID] (repeatable)", func(v string) error {
		return ParseEndpoint(t.Endpoints, v)
	})
	mode := fs.String("inbound-mode", env("TETHER_INBOUND_MODE", "strict"), "strict (only mesh mTLS) or permissive (plaintext from outside the mesh passes too)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 0, "mTLS handshake limit (default 10s)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 0, "close connections idle this long (default 1h)")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "concurrent connections per direction (default 16384)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 0, "on SIGTERM, how long open connections may finish (default 20s)")
	fs.StringVar(&c.AccessLog, "access-log", "-", "JSON access log file, - for standard output, off to disable")
	fs.Float64Var(&c.AccessLogSample, "access-log-sample", 1, "fraction of allowed connections logged (denials are always logged)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.InboundMode = proxy.Mode(*mode)
	if *transparent {
		c.Capture = &t
	}
	if c.JoinToken == "" && c.TokenFile == "" {
		if _, err := os.Stat(ProjectedTokenPath); err == nil {
			c.TokenFile = ProjectedTokenPath
		}
	}
	log, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return c, err
	}
	c.Logger = log
	return c, c.Validate()
}

// ParseOutbound parses LISTEN=PEER@ID[,ID...].
func ParseOutbound(v string) (OutboundListener, error) {
	l, rest, ok := strings.Cut(v, "=")
	peer, ids, ok2 := strings.Cut(rest, "@")
	if !ok || !ok2 || l == "" || peer == "" || ids == "" {
		return OutboundListener{}, fmt.Errorf("want LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...], got %q", v)
	}
	d := proxy.Destination{Name: peer, Addr: peer}
	for _, s := range strings.Split(ids, ",") {
		id, err := spiffeid.FromString(strings.TrimSpace(s))
		if err != nil {
			return OutboundListener{}, fmt.Errorf("outbound %q: expected identity %q: %v", v, s, err)
		}
		d.IDs = append(d.IDs, id)
	}
	return OutboundListener{Listen: l, Dest: d}, nil
}
