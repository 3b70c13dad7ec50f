package sidecar

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/logging"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/workload"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
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
	fs.StringVar(&c.JoinToken, "join-token", getenv("TETHER_JOIN_TOKEN"), "join token (standalone; env TETHER_JOIN_TOKEN); on the command line every local user reads it in /proc/PID/cmdline: prefer --join-token-file)")
	joinTokenFile := fs.String("join-token-file", getenv("TETHER_JOIN_TOKEN_FILE"), "file holding the join token, - for standard input (standalone; env TETHER_JOIN_TOKEN_FILE)")
	fs.StringVar(&c.TokenFile, "token-file", "", "projected ServiceAccount token (default "+ProjectedTokenPath+" when it exists and no join token is given)")
	fs.StringVar(&c.AdminAddr, "admin-listen", ":15020", "admin address: /healthz/ready, /healthz/live, /app-health/..., /metrics to every caller; /debug/identity, /debug/discovery, /debug/denials, POST /quitquitquit only to callers on loopback")
	fs.StringVar(&c.WorkloadSocket, "workload-socket", "/run/tether/workload.sock", "SPIFFE Workload API unix socket (empty: off)")
	socketMode := fs.String("workload-socket-mode", "0600", "who may fetch the SVID's private key from --workload-socket: 0600 (the sidecar's user), 0660 (and --workload-socket-group) or 0666 (anyone who reaches its directory: only in a pod's emptyDir, as the injector sets it)")
	socketGroup := fs.String("workload-socket-group", "", "group (name or GID) that may connect to --workload-socket, with --workload-socket-mode 0660")
	fs.Func("inbound", "explicit inbound listener LISTEN=APP, e.g. 127.0.0.1:15006=127.0.0.1:8080 (repeatable)", func(v string) error {
		l, app, ok := strings.Cut(v, "=")
		if !ok || l == "" || app == "" {
			return fmt.Errorf("want LISTEN=APP, got %q", v)
		}
		c.Inbound = append(c.Inbound, InboundListener{Listen: l, App: app})
		return nil
	})
	fs.Func("outbound", "explicit outbound listener: LISTEN=NAMESPACE/SERVICE:PORT (a mesh service, resolved from discovery for every connection; needs --discovery), "+
		"or LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...] (a fixed peer sidecar), e.g. 127.0.0.1:9000=default/api:8080 (repeatable)", func(v string) error {
		o, err := ParseOutbound(v)
		if err != nil {
			return err
		}
		c.Outbound = append(c.Outbound, o)
		return nil
	})
	fs.Func("allow", "allow a caller inbound: SPIFFE_ID or SPIFFE_ID=PORT[,PORT] (repeatable; none: every peer of the trust domain; not with --discovery, whose policy decides then)", c.Allow.ParseAllow)
	transparent := fs.Bool("transparent", false, "serve the capture listeners that `tether-sidecar init` redirects the pod's traffic to")
	t := Transparent{Endpoints: map[netip.AddrPort][]spiffeid.ID{}}
	fs.StringVar(&t.InboundAddr, "capture-inbound-listen", ":15006", "transparent mode: inbound capture listener")
	fs.StringVar(&t.OutboundAddr, "capture-outbound-listen", "127.0.0.1:15001", "transparent mode: outbound capture listener (loopback only: on the pod IP it would be an open proxy with the pod's identity)")
	fs.StringVar(&t.OutboundMode, "outbound-mode", env("TETHER_OUTBOUND_MODE", Passthrough), "transparent mode, destinations outside the mesh: passthrough, or registry-only (only mesh services and --egress-allow names)")
	loopbackPorts := fs.String("localhost-inbound-ports", "", "transparent mode: comma-separated app ports that inbound traffic may reach on 127.0.0.1 when the app does not listen on the pod IP (the pod's tether.dev/localhost-inbound-ports); other ports are reached at the pod IP only")
	fs.Func("mesh-endpoint", "transparent mode without discovery: a mesh endpoint and who serves it, IP:PORT=SPIFFE_ID[,SPIFFE_ID] (repeatable)", func(v string) error {
		return ParseEndpoint(t.Endpoints, v)
	})

	fs.StringVar(&c.DiscoveryAddr, "discovery", getenv("TETHER_DISCOVERY_ADDR"), "tether-discovery address host:port (env TETHER_DISCOVERY_ADDR); empty: no discovery, the static --allow, --outbound PEER@ID and --mesh-endpoint configuration")
	discoveryID := fs.String("discovery-id", "", "SPIFFE ID discovery must present (default spiffe://<trust-domain>/ns/tether-system/sa/tether-discovery)")
	fs.DurationVar(&c.FlowReportInterval, "flow-report-interval", DefaultFlowReportInterval, "with --discovery: how often the flows this sidecar saw (caller, service port, decision, rule, counts) are reported to discovery, and once more at shutdown; 0: off")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain of mesh service names")
	var dnsCfg DNS
	dnsListen := ""
	dnsListenSet := false
	fs.Func("dns-listen", "DNS server address, UDP and TCP (default 127.0.0.1:15053 with --transparent and --discovery, else off; empty: off)", func(v string) error {
		dnsListen, dnsListenSet = v, true
		return nil
	})
	fs.StringVar(&dnsCfg.ResolvConf, "resolv-conf", "/etc/resolv.conf", "the pod's resolver configuration: the upstream nameservers, search path and ndots of the DNS server")
	fs.Func("dns-upstream", "upstream resolver IP[:PORT] for names outside the mesh, instead of --resolv-conf's nameservers (repeatable)", func(v string) error {
		if _, err := netip.ParseAddrPort(v); err != nil {
			if _, err := netip.ParseAddr(v); err != nil {
				return fmt.Errorf("want IP or IP:PORT, got %q", v)
			}
		}
		dnsCfg.Upstreams = append(dnsCfg.Upstreams, v)
		return nil
	})
	fs.BoolVar(&dnsCfg.AnswerUnreachable, "dns-answer-unreachable", false, "answer names of mesh services this pod may not reach (default: NXDOMAIN); the proxy still refuses the connection")
	fs.Func("egress-allow", "registry-only mode: a DNS name (api.example.com) or pattern (*.googleapis.com) whose answered addresses outbound connections may reach (repeatable; needs the DNS server)", func(v string) error {
		dnsCfg.EgressAllow = append(dnsCfg.EgressAllow, v)
		return nil
	})

	mode := fs.String("inbound-mode", env("TETHER_INBOUND_MODE", "strict"), "strict (only mesh mTLS) or permissive (plaintext from outside the mesh passes too)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 0, "mTLS handshake limit (default 10s)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 0, "close connections idle this long (default 1h)")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "concurrent connections per direction (default 16384)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 0, "on SIGTERM, how long open connections may finish (default 20s)")
	fs.BoolVar(&c.EndStreamsAtSVIDExpiry, "end-streams-at-svid-expiry", false, "close an open connection when an SVID its mTLS tunnel was authenticated with expires (cuts long-lived connections once per SVID lifetime)")
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
	access, err := workload.ParseAccess(*socketMode, *socketGroup)
	if err != nil {
		return c, fmt.Errorf("--workload-socket-mode/--workload-socket-group: %w", err)
	}
	c.WorkloadSocketAccess = access
	if *transparent {
		c.Capture = &t
	}
	if *loopbackPorts != "" {
		if c.Capture == nil {
			return c, fmt.Errorf("--localhost-inbound-ports needs --transparent (explicit mode delivers to the --inbound app address)")
		}
		ports, err := capture.ParsePorts(*loopbackPorts)
		if err != nil {
			return c, fmt.Errorf("--localhost-inbound-ports: %w", err)
		}
		for _, p := range ports {
			t.LoopbackPorts = append(t.LoopbackPorts, uint16(p))
		}
	}
	if *discoveryID != "" {
		id, err := spiffeid.FromString(*discoveryID)
		if err != nil {
			return c, fmt.Errorf("--discovery-id %q: %v", *discoveryID, err)
		}
		c.DiscoveryID = id
	}
	if !dnsListenSet && c.Capture != nil && c.DiscoveryAddr != "" {
		dnsListen = DefaultDNSListen
	}
	if dnsListen != "" {
		dnsCfg.Listen = dnsListen
		c.DNS = &dnsCfg
	} else if len(dnsCfg.EgressAllow) > 0 {
		return c, fmt.Errorf("--egress-allow needs the DNS server, which records the addresses of allowed names: give --dns-listen (it is on by default only with --transparent and --discovery)")
	}
	if err := identity.ResolveJoinTokenFlags(&c.JoinToken, &c.TokenFile, *joinTokenFile, ProjectedTokenPath, os.Stdin); err != nil {
		return c, err
	}
	log, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return c, err
	}
	c.Logger = log
	return c, c.Validate()
}

// ParseOutbound parses LISTEN=NAMESPACE/SERVICE:PORT (a mesh service) or
// LISTEN=PEER@ID[,ID...] (a fixed peer sidecar).
func ParseOutbound(v string) (OutboundListener, error) {
	l, rest, ok := strings.Cut(v, "=")
	if !ok || l == "" || rest == "" {
		return OutboundListener{}, fmt.Errorf("want LISTEN=NAMESPACE/SERVICE:PORT or LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...], got %q", v)
	}
	peer, ids, isPeer := strings.Cut(rest, "@")
	if !isPeer {
		key, port, err := ParseServicePort(rest)
		if err != nil {
			return OutboundListener{}, fmt.Errorf("outbound %q: %v (or give a fixed peer, LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...])", v, err)
		}
		return OutboundListener{Listen: l, Service: key, Port: port}, nil
	}
	if peer == "" || ids == "" {
		return OutboundListener{}, fmt.Errorf("want LISTEN=PEER@SPIFFE_ID[,SPIFFE_ID...] or LISTEN=NAMESPACE/SERVICE:PORT, got %q", v)
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

var (
	// DNS-1123 label (namespaces) and DNS-1035 label (Service names), as
	// Kubernetes requires them.
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	serviceRE   = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
)

// ParseServicePort parses NAMESPACE/SERVICE:PORT, e.g. default/api:8080.
func ParseServicePort(s string) (wire.ServiceKey, uint16, error) {
	ns, rest, ok := strings.Cut(s, "/")
	name, ps, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return wire.ServiceKey{}, 0, fmt.Errorf("want NAMESPACE/SERVICE:PORT, got %q", s)
	}
	if len(ns) > 63 || !namespaceRE.MatchString(ns) {
		return wire.ServiceKey{}, 0, fmt.Errorf("namespace %q is not a lower-case DNS label", ns)
	}
	if len(name) > 63 || !serviceRE.MatchString(name) {
		return wire.ServiceKey{}, 0, fmt.Errorf("service %q is not a lower-case DNS label starting with a letter", name)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return wire.ServiceKey{}, 0, fmt.Errorf("port %q: want a number from 1 to 65535", ps)
	}
	return wire.ServiceKey{Namespace: ns, Name: name}, uint16(port), nil
}
