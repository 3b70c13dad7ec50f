package discovery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// ErrBadFile marks every error about the content of a mesh.yaml file.
var ErrBadFile = errors.New("bad mesh file")

// MeshFile is a decoded mesh.yaml.
type MeshFile struct {
	// TrustDomain is zero when the file does not set it.
	TrustDomain spiffeid.TrustDomain
	// DefaultPolicy is 0 when the file does not set it.
	DefaultPolicy policy.Default
	// DefaultPolicyMode is the mode of the mesh default; empty when the
	// file does not set it.
	DefaultPolicyMode policy.Mode
	State             State
}

// The document as written; see the package documentation.
type fileDoc struct {
	TrustDomain   string                `json:"trustDomain,omitempty"`
	DefaultPolicy string                `json:"defaultPolicy,omitempty"`
	DefaultMode   string                `json:"defaultPolicyMode,omitempty"`
	Namespaces    []fileNamespace       `json:"namespaces,omitempty"`
	Services      []fileService         `json:"services,omitempty"`
	Remote        []fileRemoteService   `json:"remoteServices,omitempty"`
	Policies      []policy.AccessPolicy `json:"policies,omitempty"`
}

// fileRemoteService is a RemoteService, with the fields of the CRD's spec.
type fileRemoteService struct {
	Name        string               `json:"name"`
	Namespace   string               `json:"namespace,omitempty"`
	TrustDomain string               `json:"trustDomain"`
	Addresses   []string             `json:"addresses,omitempty"`
	Ports       []filePort           `json:"ports,omitempty"`
	Endpoints   []fileRemoteEndpoint `json:"endpoints,omitempty"`
}

type fileRemoteEndpoint struct {
	Address  string `json:"address"`
	Port     int    `json:"port"`
	Identity string `json:"identity"`
}

type fileNamespace struct {
	Name              string `json:"name"`
	DefaultPolicy     string `json:"defaultPolicy,omitempty"`
	DefaultPolicyMode string `json:"defaultPolicyMode,omitempty"`
}

type fileService struct {
	Name       string         `json:"name"`
	Namespace  string         `json:"namespace,omitempty"`
	ClusterIPs []string       `json:"clusterIPs,omitempty"`
	Ports      []filePort     `json:"ports,omitempty"`
	Endpoints  []fileEndpoint `json:"endpoints,omitempty"`
}

type filePort struct {
	Name        string `json:"name,omitempty"`
	Port        int    `json:"port"`
	TargetPort  int    `json:"targetPort,omitempty"`
	AppProtocol string `json:"appProtocol,omitempty"`
}

type fileEndpoint struct {
	Address        string `json:"address"`
	Port           int    `json:"port,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	Pod            string `json:"pod,omitempty"`
	Identity       string `json:"identity,omitempty"`
}

// ParseMeshFile decodes a mesh.yaml document strictly: unknown fields,
// duplicate keys, malformed addresses, ports or identities, and policies of
// another apiVersion or kind are errors (wrapping ErrBadFile) naming the
// service or policy at fault. Semantic checks that need the trust domain
// (names, identities, policy contents) are Registry.Update's.
func ParseMeshFile(data []byte) (*MeshFile, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: file is empty", ErrBadFile)
	}
	var doc fileDoc
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrBadFile, explainYAML(data, err))
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrBadFile, fmt.Sprintf(format, args...)))
	}
	mf := &MeshFile{}
	if doc.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(doc.TrustDomain)
		if err != nil {
			bad("trustDomain %q: %v", doc.TrustDomain, err)
		}
		mf.TrustDomain = td
	}
	if doc.DefaultPolicy != "" {
		d, err := wire.ParseDefault(doc.DefaultPolicy)
		if err != nil {
			bad("defaultPolicy: %v", err)
		}
		mf.DefaultPolicy = d
	}
	if doc.DefaultMode != "" {
		m, err := policy.ParseDefaultMode(doc.DefaultMode)
		if err != nil {
			bad("defaultPolicyMode: %v", err)
		}
		mf.DefaultPolicyMode = m
	}
	for _, ns := range doc.Namespaces {
		mf.State.Namespaces = append(mf.State.Namespaces, Namespace(ns))
	}
	for i, fs := range doc.Services {
		ref := fmt.Sprintf("services[%d]", i)
		if fs.Name != "" {
			ref = "service " + cmpOr(fs.Namespace, "default") + "/" + fs.Name
		}
		s := Service{Key: ServiceKey{Namespace: fs.Namespace, Name: fs.Name}}
		s.ClusterIPs = parseFileAddrs(ref, "clusterIPs", fs.ClusterIPs, bad)
		s.Ports = parseFilePorts(ref, fs.Ports, bad)
		for j, e := range fs.Endpoints {
			ep := Endpoint{ServiceAccount: e.ServiceAccount, Pod: e.Pod}
			var err error
			if ep.Addr, err = netip.ParseAddr(e.Address); err != nil {
				bad("%s: endpoints[%d]: address %q is not an IP address", ref, j, e.Address)
			}
			if e.Port < 0 || e.Port > 65535 {
				bad("%s: endpoints[%d]: port %d is outside 1-65535", ref, j, e.Port)
			}
			ep.Port = uint16(e.Port)
			if e.Identity != "" {
				if ep.ID, err = spiffeid.FromString(e.Identity); err != nil {
					bad("%s: endpoints[%d]: identity %q: %v", ref, j, e.Identity, err)
				}
				if e.ServiceAccount != "" {
					bad("%s: endpoints[%d]: set identity or serviceAccount, not both", ref, j)
				}
			}
			s.Endpoints = append(s.Endpoints, ep)
		}
		mf.State.Services = append(mf.State.Services, s)
	}
	for i, fr := range doc.Remote {
		mf.State.RemoteServices = append(mf.State.RemoteServices, parseRemote(i, fr, bad))
	}
	for i, p := range doc.Policies {
		ref := fmt.Sprintf("policies[%d]", i)
		if p.Name != "" {
			ref = "AccessPolicy " + cmpOr(p.Namespace, "default") + "/" + p.Name
		}
		if p.APIVersion != policy.SchemeGroupVersion.String() {
			bad("%s: apiVersion %q: want %s", ref, p.APIVersion, policy.SchemeGroupVersion)
		}
		if p.Kind != policy.Kind {
			bad("%s: kind %q: want %s", ref, p.Kind, policy.Kind)
		}
		if err := p.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", ErrBadFile, err))
		}
		mf.State.Policies = append(mf.State.Policies, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return mf, nil
}

// parseRemote decodes one entry of remoteServices, reporting the fields
// that do not parse to bad; Registry.Update checks the rest (see
// ValidateRemoteService).
func parseRemote(i int, fr fileRemoteService, bad func(format string, args ...any)) RemoteService {
	ref := fmt.Sprintf("remoteServices[%d]", i)
	if fr.Name != "" {
		ref = "remote service " + cmpOr(fr.Namespace, "default") + "/" + fr.Name
	}
	rs := RemoteService{Key: ServiceKey{Namespace: fr.Namespace, Name: fr.Name}}
	if fr.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(fr.TrustDomain)
		if err != nil {
			bad("%s: trustDomain %q: %v", ref, fr.TrustDomain, err)
		}
		rs.TrustDomain = td
	}
	rs.Addresses = parseFileAddrs(ref, "addresses", fr.Addresses, bad)
	rs.Ports = parseFilePorts(ref, fr.Ports, bad)
	for j, e := range fr.Endpoints {
		var ep RemoteEndpoint
		var err error
		if ep.Addr, err = netip.ParseAddr(e.Address); err != nil {
			bad("%s: endpoints[%d]: address %q is not an IP address", ref, j, e.Address)
		}
		if e.Port < 0 || e.Port > 65535 {
			bad("%s: endpoints[%d]: port %d is outside 1-65535", ref, j, e.Port)
		}
		ep.Port = uint16(e.Port)
		if e.Identity != "" {
			if ep.ID, err = spiffeid.FromString(e.Identity); err != nil {
				bad("%s: endpoints[%d]: identity %q: %v", ref, j, e.Identity, err)
			}
		}
		rs.Endpoints = append(rs.Endpoints, ep)
	}
	return rs
}

var unknownFieldRE = regexp.MustCompile(`unknown field "([^"]+)"`)

// explainYAML trims the decoder's wording and, for an unknown field, adds
// the line it is on when the key appears only once (the JSON decoder that
// finds unknown fields knows no lines).
// parseFileAddrs parses the IP addresses of field (clusterIPs, addresses)
// of the object ref, reporting each bad one.
func parseFileAddrs(ref, field string, addrs []string, bad func(format string, args ...any)) []netip.Addr {
	var out []netip.Addr
	for j, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			bad("%s: %s[%d]: %q is not an IP address", ref, field, j, a)
		}
		out = append(out, ip)
	}
	return out
}

// parseFilePorts checks and converts the ports of the object ref,
// reporting each bad one.
func parseFilePorts(ref string, ports []filePort, bad func(format string, args ...any)) []Port {
	var out []Port
	for j, p := range ports {
		if p.Port < 1 || p.Port > 65535 {
			bad("%s: ports[%d]: port %d is outside 1-65535", ref, j, p.Port)
		}
		if p.TargetPort < 0 || p.TargetPort > 65535 {
			bad("%s: ports[%d]: targetPort %d is outside 1-65535", ref, j, p.TargetPort)
		}
		out = append(out, Port{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	return out
}

func explainYAML(data []byte, err error) string {
	msg := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	m := unknownFieldRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	keyRE := regexp.MustCompile(`^\s*(-\s+)?"?` + regexp.QuoteMeta(m[1]) + `"?\s*:`)
	line := 0
	for i, l := range strings.Split(string(data), "\n") {
		if keyRE.MatchString(l) {
			if line != 0 {
				return msg
			}
			line = i + 1
		}
	}
	if line == 0 {
		return msg
	}
	return fmt.Sprintf("line %d: %s", line, msg)
}

// LoadMeshFile reads and decodes the mesh.yaml at path.
func LoadMeshFile(path string) (*MeshFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	mf, err := ParseMeshFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return mf, nil
}

// LoadFile reads the mesh.yaml at path and returns the State it describes.
func LoadFile(path string) (State, error) {
	mf, err := LoadMeshFile(path)
	if err != nil {
		return State{}, err
	}
	return mf.State, nil
}

// FileSource feeds a Registry from a mesh.yaml file, reloading it when it
// changes. The file's trustDomain and defaultPolicy, when set, must match
// the Registry's: they are fixed for the Registry's life.
type FileSource struct {
	Path string
	// Interval between checks of the file; 0 means 1s.
	Interval time.Duration
	// Logger receives reloads and rejected files; nil discards.
	Logger *slog.Logger
	// Rejected, if set, is called with the error each time Run, after the
	// first load, finds a version of the file it cannot read or apply (the
	// last good snapshot stays). It runs on Run's goroutine and must not
	// block.
	Rejected func(err error)
}

// fileStamp identifies one version of the file.
type fileStamp struct {
	modTime time.Time
	size    int64
	sum     [sha256.Size]byte
	missing bool
}

// Run loads the file into reg, failing if it cannot, then checks it every
// Interval (modification time and size, then content hash) and calls
// reg.Update when its content changes, until ctx is done; it then returns
// nil. A file that cannot be read or decoded, or a State reg rejects, is
// logged at Warn once per version of the file and leaves the last good
// snapshot in place.
func (f *FileSource) Run(ctx context.Context, reg *Registry) error {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("file", f.Path))
	interval := f.Interval
	if interval <= 0 {
		interval = time.Second
	}
	last, data, err := f.read()
	prev := reg.Snapshot()
	if err == nil {
		err = f.apply(reg, data)
	}
	if err != nil {
		return err
	}
	LogRefusals(log, prev, reg.Snapshot())
	log.Info("mesh file loaded", slog.Uint64("version", reg.Snapshot().Version()))
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if fi, err := os.Stat(f.Path); err == nil && !last.missing && fi.ModTime().Equal(last.modTime) && fi.Size() == last.size {
			continue
		}
		stamp, data, err := f.read()
		if err != nil {
			if !last.missing {
				log.Warn("mesh file unreadable; keeping the last good state", slog.Uint64("version", reg.Snapshot().Version()), slog.Any("error", err))
				f.rejected(err)
			}
			last = stamp
			continue
		}
		same := !last.missing && stamp.sum == last.sum
		last = stamp
		if same {
			continue // touched, same content
		}
		prev := reg.Snapshot()
		if err := f.apply(reg, data); err != nil {
			log.Warn("mesh file rejected; keeping the last good state", slog.Uint64("version", reg.Snapshot().Version()), slog.Any("error", err))
			f.rejected(err)
			continue
		}
		LogRefusals(log, prev, reg.Snapshot())
		log.Info("mesh file reloaded", slog.Uint64("version", reg.Snapshot().Version()))
	}
}

func (f *FileSource) rejected(err error) {
	if f.Rejected != nil {
		f.Rejected(err)
	}
}

// read returns the file's content and its stamp; on error the stamp is
// marked missing.
func (f *FileSource) read() (fileStamp, []byte, error) {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return fileStamp{missing: true}, nil, err
	}
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return fileStamp{missing: true}, nil, err
	}
	return fileStamp{modTime: fi.ModTime(), size: fi.Size(), sum: sha256.Sum256(data)}, data, nil
}

// apply decodes data and updates reg with it.
func (f *FileSource) apply(reg *Registry, data []byte) error {
	mf, err := ParseMeshFile(data)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if !mf.TrustDomain.IsZero() && mf.TrustDomain != reg.TrustDomain() {
		return fmt.Errorf("%s: %w: trustDomain %s differs from the registry's %s (restart to change it)", f.Path, ErrBadFile, mf.TrustDomain.Name(), reg.TrustDomain().Name())
	}
	if mf.DefaultPolicy != 0 && mf.DefaultPolicy != reg.MeshDefault() {
		return fmt.Errorf("%s: %w: defaultPolicy %s differs from the registry's %s (restart to change it)", f.Path, ErrBadFile, mf.DefaultPolicy, reg.MeshDefault())
	}
	if mf.DefaultPolicyMode != "" && mf.DefaultPolicyMode.Audited() != reg.MeshDefaultMode().Audited() {
		return fmt.Errorf("%s: %w: defaultPolicyMode %s differs from the registry's %s (restart to change it)", f.Path, ErrBadFile,
			policy.DefaultModeString(mf.DefaultPolicyMode), policy.DefaultModeString(reg.MeshDefaultMode()))
	}
	if err := reg.Update(mf.State); err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	return nil
}
