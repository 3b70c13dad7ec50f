// Package demo is `tether demo`: Tether's standalone default run on this
// machine, on loopback and without root (tether-ca, tether-discovery, three
// sample services each behind its own tether-sidecar, and traffic), telling
// what happens; with --rotate, a root rotation under that traffic.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/cliflag"
)

// Help is the long help of tether demo.
const Help = `Runs Tether's standalone default on this machine, on loopback and without
root: tether-ca (its state in a temporary directory, or --dir),
tether-discovery serving a generated mesh.yaml, three sample services
web → api → db each behind its own tether-sidecar in explicit mode, and a
traffic loop. It says what happens: the identities issued, the calls
allowed, a call from web straight to db denied by policy and why, and how to
look around. Ctrl-C stops everything and leaves nothing running.

With --rotate it also rotates the CA's root (prepare, activate, retire)
under traffic, with lifetimes shortened to seconds, and reports the requests
attempted, succeeded and failed in each phase.

With --federation it runs two meshes instead, with their own trust domains
a.example and b.example, each with its own tether-ca, tether-discovery and
sidecars; each CA follows the other's SPIFFE bundle endpoint. a.example's web
calls b.example's api as a remote service over tether/1 with its own
identity; b.example's policy admits spiffe://a.example/ns/default/sa/web and
refuses a.example's batch. Both calls are shown with the caller's SPIFFE ID
from api's sidecar access log. Ports with --federation: a.example's tether-ca
N, its metrics N+1, its bundle endpoint N+2, its tether-discovery N+3 and
N+4, web N+10 to N+12, batch N+15 to N+17; b.example's the same from N+20,
api N+30 to N+32.

tether-ca, tether-discovery and tether-sidecar run as separate processes,
from --bin (default: the directory of this tether binary). Build them with
make build. Ports: --ports N uses 127.0.0.1 ports N to N+32 (tether-ca N,
its metrics N+1, tether-discovery N+2, its metrics N+3; web's app, sidecar
inbound and sidecar admin N+10 to N+12, api's N+20 to N+22, db's N+30 to
N+32; the sidecars' outbound listeners N+13 to N+15 and N+23); --ports 0
takes any free ports.

Exit status: 0 when the demo ran and stopped cleanly; 1 when something
failed (a component did not start or exited, an allowed call failed, the
denied call went through, the rotation did not complete, a caller's ID in
the access log is not the one that called); 2 usage error.`

// Defaults of tether demo.
const (
	demoDefaultPorts = 18000
	demoPortSpan     = 32 // ports N to N+demoPortSpan
	demoTrustDomain  = "cluster.local"
	demoNamespace    = "default"
)

// demoBinaries are the components tether demo runs, as make build names them.
var demoBinaries = []struct{ name, pkg string }{
	{"tether-ca", "./cmd/ca"},
	{"tether-discovery", "./cmd/discovery"},
	{"tether-sidecar", "./cmd/sidecar"},
}

// demoConfig is tether demo's validated command line.
type demoConfig struct {
	rotate     bool
	federation bool
	duration   time.Duration
	// dir holds the state and logs; keep is true when the user chose it
	// (it is then left in place).
	dir  string
	keep bool
	// ports is the first port of the range, 0 for any free ports.
	ports int
	bin   string
	rate  float64
	// self is this tether binary, which also runs the sample apps.
	self string
}

// Command is `tether demo` with its outputs.
type Command struct {
	// Stdout gets the demo's story; Stderr flag errors, help and the
	// sample app's log.
	Stdout, Stderr io.Writer
	// Tether runs another tether command (args without "tether") with the
	// given outputs: the demo shows what `tether ca status`, `tether policy
	// graph` and `tether policy check` say.
	Tether func(ctx context.Context, args []string, stdout, stderr io.Writer) error

	// cfg holds the flags AddFlags registers.
	cfg demoConfig
}

// AddFlags registers tether demo's flags on fs; Run reads them.
func (c *Command) AddFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&c.cfg.rotate, "rotate", false, "rotate the CA's root (prepare, activate, retire) under traffic and report each phase")
	fs.BoolVar(&c.cfg.federation, "federation", false, "run two meshes with their own trust domains (a.example, b.example) that trust each other by SPIFFE bundle: a.example's web calls b.example's api, which admits it by SPIFFE ID and refuses a.example's batch")
	fs.DurationVar(&c.cfg.duration, "duration", 0, "stop after this long once the mesh is up (with --rotate, not before the rotation has finished); 0: run until Ctrl-C")
	fs.StringVar(&c.cfg.dir, "dir", "", "keep the CA state, mesh.yaml, sockets and logs in this directory, and leave it in place (default: a temporary directory, removed at the end)")
	fs.IntVar(&c.cfg.ports, "ports", demoDefaultPorts, fmt.Sprintf("first of the loopback ports N to N+%d the demo listens on; 0: any free ports", demoPortSpan))
	fs.StringVar(&c.cfg.bin, "bin", "", "directory holding tether-ca, tether-discovery and tether-sidecar (default: the directory of this tether binary)")
	fs.Float64Var(&c.cfg.rate, "rate", 5, "calls web → api → db per second in the traffic loop (the denied web → db call is tried every 2 seconds)")
}

// Run runs `tether demo` with the flags AddFlags registered. Usage errors
// wrap cliflag.ErrUsage.
func (c *Command) Run(ctx context.Context) error {
	cfg, err := c.cfg.validate()
	if err != nil {
		return err
	}
	if err := checkDemoBinaries(cfg.bin); err != nil {
		return err
	}
	layout := demoPortLayout
	if cfg.federation {
		layout = fedPortLayout
	}
	ports, err := planPorts(cfg.ports, layout)
	if err != nil {
		return err
	}
	d := &demo{cfg: cfg, out: c.Stdout, tether: c.Tether, ports: ports}
	if cfg.federation {
		return (&fedDemo{demo: d}).run(ctx)
	}
	return d.run(ctx)
}

// validate checks the flags and completes them: the directory of this
// binary, an absolute --dir.
func (c demoConfig) validate() (demoConfig, error) {
	switch {
	case c.duration < 0:
		return c, fmt.Errorf("%w: --duration %s: must not be negative", cliflag.ErrUsage, c.duration)
	case c.rotate && c.federation:
		return c, fmt.Errorf("%w: --rotate and --federation do not run together (the rotation across trust domains is tested in test/mesh, not shown by the demo)", cliflag.ErrUsage)
	case c.rate <= 0 || c.rate > 200:
		return c, fmt.Errorf("%w: --rate %g: want a number of calls per second from above 0 to 200", cliflag.ErrUsage, c.rate)
	case c.ports != 0 && (c.ports < 1024 || c.ports+demoPortSpan > 65535):
		return c, fmt.Errorf("%w: --ports %d: want 0 (any free ports) or a first port from 1024 to %d", cliflag.ErrUsage, c.ports, 65535-demoPortSpan)
	}
	self, err := os.Executable()
	if err != nil {
		return c, fmt.Errorf("find this tether binary (it runs the sample apps): %w", err)
	}
	if s, err := filepath.EvalSymlinks(self); err == nil {
		self = s
	}
	c.self = self
	if c.bin == "" {
		c.bin = filepath.Dir(self)
	}
	if c.dir != "" {
		abs, err := filepath.Abs(c.dir)
		if err != nil {
			return c, fmt.Errorf("%w: --dir %q: %v", cliflag.ErrUsage, c.dir, err)
		}
		c.dir, c.keep = abs, true
	}
	return c, nil
}

// errDemoBinaries says the components are not where tether demo looks.
var errDemoBinaries = errors.New("missing Tether binaries")

// checkDemoBinaries makes sure every component can be run from dir, and
// otherwise says exactly how to build them.
func checkDemoBinaries(dir string) error {
	var missing []string
	for _, b := range demoBinaries {
		fi, err := os.Stat(filepath.Join(dir, b.name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, b.name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	verb := "are"
	if len(missing) == 1 {
		verb = "is"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "tether demo runs tether-ca, tether-discovery and tether-sidecar as separate processes from %s, and %s %s not there (or not executable).\n",
		dir, strings.Join(missing, ", "), verb)
	b.WriteString("Build them in the Tether repository with\n    make build\n(then run bin/tether demo), or with\n")
	for _, bin := range demoBinaries {
		fmt.Fprintf(&b, "    go build -o %s %s\n", filepath.Join(dir, bin.name), bin.pkg)
	}
	b.WriteString("or give --bin the directory that holds them")
	return fmt.Errorf("%w: %s", errDemoBinaries, b.String())
}

// demoPort is one loopback port of the demo, by role.
type demoPort struct {
	key, role string
	offset    int
}

// demoPortLayout places every listener at base+offset (see demoHelp).
var demoPortLayout = []demoPort{
	{"ca", "tether-ca's gRPC API", 0},
	{"ca-admin", "tether-ca's metrics", 1},
	{"discovery", "tether-discovery's xDS port", 2},
	{"discovery-admin", "tether-discovery's metrics", 3},
	{"web-app", "the web app", 10},
	{"web-inbound", "web's sidecar inbound", 11},
	{"web-admin", "web's sidecar admin port", 12},
	{"web-to-api", "web's sidecar outbound to api", 13},
	{"web-to-db", "web's sidecar outbound to db", 14},
	{"web-to-db-fixed", "web's sidecar fixed route to db's sidecar", 15},
	{"api-app", "the api app", 20},
	{"api-inbound", "api's sidecar inbound", 21},
	{"api-admin", "api's sidecar admin port", 22},
	{"api-to-db", "api's sidecar outbound to db", 23},
	{"db-app", "the db app", 30},
	{"db-inbound", "db's sidecar inbound", 31},
	{"db-admin", "db's sidecar admin port", 32},
}

// demoAddrs maps the keys of demoPortLayout to 127.0.0.1:port.
type demoAddrs map[string]string

// errPortBusy marks a port of the demo's range that something else holds.
var errPortBusy = errors.New("port in use")

// planDemoPorts returns the demo's addresses: base+offset, each checked
// to be free now; or, with base 0, free ports the kernel picks.
func planDemoPorts(base int) (demoAddrs, error) { return planPorts(base, demoPortLayout) }

// planPorts is planDemoPorts for a layout.
func planPorts(base int, layout []demoPort) (demoAddrs, error) {
	addrs := demoAddrs{}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, p := range layout {
		want := "127.0.0.1:0"
		if base != 0 {
			want = net.JoinHostPort("127.0.0.1", strconv.Itoa(base+p.offset))
		}
		l, err := net.Listen("tcp", want)
		if err != nil {
			if base == 0 {
				return nil, fmt.Errorf("find a free loopback port for %s: %w", p.role, err)
			}
			return nil, fmt.Errorf("%w: %s (for %s) cannot be bound: %v. Another tether demo may be running; stop what holds it, "+
				"or choose another range with --ports N (ports N to N+%d) or --ports 0 (any free ports)", errPortBusy, want, p.role, err, demoPortSpan)
		}
		held = append(held, l) // held until all are chosen, so none repeats
		addrs[p.key] = l.Addr().String()
	}
	return addrs, nil
}

// demo is one run of tether demo.
type demo struct {
	cfg   demoConfig
	ports demoAddrs
	// tether runs another tether command (Command.Tether).
	tether func(ctx context.Context, args []string, stdout, stderr io.Writer) error

	outMu sync.Mutex
	out   io.Writer

	dir      string
	meshFile string
	caDir    string
	logDir   string
	services []*demoService // start order: db, api, web

	admin      cav1.AdminClient
	closeAdmin func()

	procsMu sync.Mutex
	procs   []*proc
	// failed ends the run when a component exits on its own.
	failed context.CancelCauseFunc

	traffic *traffic
	// summary, when set, tells the traffic at the end instead of traffic.
	summary func()
}

// demoService is a sample service: its app and its sidecar.
type demoService struct {
	name string
	// port is the service port callers name (mesh.yaml, policies).
	port int
	// from is the service account its AccessPolicy lets in ("": nobody).
	from  string
	calls []demoCall

	app, inbound, admin string
	socket, accessLog   string
	appProc, sidecar    *proc
}

// demoCall is a service the app calls through an outbound listener of its
// sidecar: target is NAMESPACE/SERVICE:PORT, or PEER@SPIFFE_ID for a
// fixed route.
type demoCall struct {
	name, portKey, target string
}

func (s *demoService) id() string { return demoID(s.name) }

func demoID(sa string) string {
	return "spiffe://" + demoTrustDomain + "/ns/" + demoNamespace + "/sa/" + sa
}

const demoDiscoveryID = "spiffe://" + demoTrustDomain + "/ns/tether-system/sa/tether-discovery"

// say prints one line (or several) of the story, whole.
func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, format+"\n", args...)
}

// makeDirs creates the demo's directory (--dir, or a temporary one) and
// its logs directory.
func (d *demo) makeDirs() error {
	d.dir = d.cfg.dir
	if d.dir == "" {
		dir, err := os.MkdirTemp("", "tether-demo-")
		if err != nil {
			return fmt.Errorf("create the demo's directory: %w", err)
		}
		d.dir = dir
	}
	d.logDir = filepath.Join(d.dir, "logs")
	if err := os.MkdirAll(d.logDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d.logDir, err)
	}
	return nil
}

// plan lays out the directory and the three services.
func (d *demo) plan() error {
	if err := d.makeDirs(); err != nil {
		return err
	}
	d.caDir = filepath.Join(d.dir, "ca")
	d.meshFile = filepath.Join(d.dir, "mesh.yaml")
	p := d.ports
	db := &demoService{name: "db", port: 5432, from: "api"}
	api := &demoService{name: "api", port: 80, from: "web", calls: []demoCall{{"db", "api-to-db", "default/db:5432"}}}
	web := &demoService{name: "web", port: 80, calls: []demoCall{
		{"api", "web-to-api", "default/api:80"},
		{"db", "web-to-db", "default/db:5432"},
		// A route fixed past web's view of the policy: only db's sidecar
		// can refuse it, and does.
		{"db-fixed", "web-to-db-fixed", p["db-inbound"] + "@" + demoID("db")},
	}}
	d.services = []*demoService{db, api, web}
	for _, s := range d.services {
		s.app, s.inbound, s.admin = p[s.name+"-app"], p[s.name+"-inbound"], p[s.name+"-admin"]
		s.socket = filepath.Join(d.dir, s.name, "workload.sock")
		s.accessLog = filepath.Join(d.logDir, s.name+"-sidecar.access.log")
		if err := os.MkdirAll(filepath.Dir(s.socket), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(s.socket), err)
		}
		// Unix socket paths are limited to 107 bytes.
		if len(s.socket) > 100 {
			return fmt.Errorf("the Workload API socket path %s is too long for a unix socket: give a shorter --dir", s.socket)
		}
	}
	return os.WriteFile(d.meshFile, []byte(d.meshYAML()), 0o600)
}

func (d *demo) service(name string) *demoService {
	for _, s := range d.services {
		if s.name == name {
			return s
		}
	}
	return nil
}

// meshYAML is the registry tether-discovery serves: the three services,
// each endpoint being its sidecar's inbound listener (in explicit mode the
// target port is the app's port), and two AccessPolicies; everything else
// is denied.
func (d *demo) meshYAML() string {
	var b strings.Builder
	b.WriteString(`# Generated by tether demo. Services on loopback, each behind its own
# tether-sidecar in explicit mode: an endpoint's port is its sidecar's
# inbound listener, targetPort is the app's port.
trustDomain: ` + demoTrustDomain + `
defaultPolicy: deny    # what no AccessPolicy allows is denied
services:
`)
	for _, name := range []string{"web", "api", "db"} {
		s := d.service(name)
		ih, ip, _ := net.SplitHostPort(s.inbound)
		_, ap, _ := net.SplitHostPort(s.app)
		fmt.Fprintf(&b, "  - name: %s\n    ports: [{port: %d, targetPort: %s}]\n    endpoints: [{address: %s, port: %s, serviceAccount: %s}]\n",
			s.name, s.port, ap, ih, ip, s.name)
	}
	b.WriteString("policies:\n")
	for _, name := range []string{"api", "db"} {
		s := d.service(name)
		fmt.Fprintf(&b, `  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: %s-from-%s, namespace: %s}
    spec:
      destination: {service: %s}
      sources: [{serviceAccount: {name: %s}}]
`, s.name, s.from, demoNamespace, s.name, s.from)
	}
	return b.String()
}

// cmdPath shows a path as the user can type it: relative to the working
// directory when below it.
func cmdPath(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(rel, "..") {
			if !strings.Contains(rel, string(filepath.Separator)) {
				return "." + string(filepath.Separator) + rel
			}
			return rel
		}
	}
	return p
}
