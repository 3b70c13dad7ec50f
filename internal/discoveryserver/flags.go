package discoveryserver

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tether-mesh/tether/internal/logging"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/identity"
)

// ProjectedTokenPath is where tether-discovery's Deployment mounts its
// projected ServiceAccount token (audience tether-ca), as for sidecars.
const ProjectedTokenPath = "/var/run/secrets/tether/token"

// ParseFlags turns tether-discovery's command line into a validated
// Config. getenv supplies the environment defaults; usage and the log go
// to stderr. -h gives flag.ErrHelp.
func ParseFlags(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("tether-discovery", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.TrustDomain, "trust-domain", env("TETHER_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (env TETHER_TRUST_DOMAIN)")
	fs.StringVar(&c.Registry, "registry", RegistryFile, "where services and policies come from: file (--mesh-file) or kube (the Kubernetes API)")
	fs.StringVar(&c.MeshFile, "mesh-file", "", "mesh.yaml to serve with --registry=file; reloaded on change")
	fs.DurationVar(&c.MeshFileInterval, "mesh-file-interval", DefaultMeshFileInterval, "how often --mesh-file is checked for changes")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", getenv("KUBECONFIG"), "kubeconfig file for --registry=kube; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.DefaultPolicy, "default-policy", "", "mesh-wide default where no AccessPolicy names a service: allow-mesh, same-namespace or deny (default: the mesh file's defaultPolicy, else allow-mesh)")
	fs.StringVar(&c.DefaultPolicyMode, "default-policy-mode", "", "mode of the mesh default: enforce, or audit (connections it would deny pass and are logged and counted as audit-deny) (default: the mesh file's defaultPolicyMode, else enforce)")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", env("TETHER_CLUSTER_DOMAIN", DefaultClusterDomain), "cluster DNS domain of service names (<svc>.<ns>.svc.<domain>) (env TETHER_CLUSTER_DOMAIN)")
	fs.StringVar(&c.ListenAddr, "listen", ":15010", "address of the xDS (ADS) gRPC port, mTLS")
	fs.IntVar(&c.MaxConcurrentSyncs, "max-concurrent-syncs", xds.DefaultMaxConcurrentSyncs, "sidecars sent their whole configuration at once; others wait their turn (bounds memory when many reconnect)")
	fs.IntVar(&c.MaxSyncsPerIdentity, "max-syncs-per-identity", 0, "of those, the most one SPIFFE ID's streams hold at once; waiting identities take turns (0: a quarter of --max-concurrent-syncs)")
	fs.IntVar(&c.MaxStreamsPerIdentity, "max-streams-per-identity", xds.DefaultMaxStreamsPerIdentity, "open ADS streams one SPIFFE ID may have; more are refused with ResourceExhausted (set above the replicas of the largest workload, twice over)")
	fs.StringVar(&c.AdminAddr, "admin-listen", ":15014", "address of /healthz, /readyz and /metrics (to every caller) and /debug/sidecars and /debug/flows (to callers on loopback only)")
	fs.IntVar(&c.FlowMaxEdges, "flow-max-edges", flows.DefaultMaxEdges, "edges the observed-traffic table holds at most; more are dropped and counted (tether_discovery_flow_edges_dropped_total)")
	fs.IntVar(&c.FlowMaxEdgesPerReporter, "flow-max-edges-per-reporter", flows.DefaultMaxEdgesPerReporter, "of those, the most one sidecar identity may add")
	fs.DurationVar(&c.FlowRetention, "flow-retention", flows.DefaultRetention, "an observed-traffic edge not seen for this long is forgotten")
	fs.StringVar(&c.CAAddr, "ca", env("TETHER_CA_ADDR", "tether-ca.tether-system.svc:8443"), "tether-ca address (env TETHER_CA_ADDR)")
	fs.StringVar(&c.BundleFile, "bundle", "/etc/tether/bundle/bundle.pem", "PEM trust bundle that verifies the CA at bootstrap")
	fs.StringVar(&c.JoinToken, "join-token", getenv("TETHER_JOIN_TOKEN"), "join token for discovery's own identity (standalone; env TETHER_JOIN_TOKEN); on the command line every local user reads it in /proc/PID/cmdline: prefer --join-token-file)")
	joinTokenFile := fs.String("join-token-file", getenv("TETHER_JOIN_TOKEN_FILE"), "file holding the join token, - for standard input (standalone; env TETHER_JOIN_TOKEN_FILE)")
	fs.StringVar(&c.TokenFile, "token-file", "", "projected ServiceAccount token (default "+ProjectedTokenPath+" when it exists and no join token is given)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := identity.ResolveJoinTokenFlags(&c.JoinToken, &c.TokenFile, *joinTokenFile, ProjectedTokenPath, os.Stdin); err != nil {
		return c, err
	}
	log, err := logging.New(stderr, *logLevel, *logFormat)
	if err != nil {
		return c, err
	}
	c.Logger = log
	return c, c.Validate()
}
