package discovery

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// ErrInvalidState marks every error returned by Registry.Update for a State
// it rejects.
var ErrInvalidState = errors.New("invalid registry state")

var (
	// DNS-1035 label: Service names and port names.
	serviceRE = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 label: namespaces.
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

func dnsLabel(re *regexp.Regexp, s string) bool { return len(s) <= 63 && re.MatchString(s) }

// Registry holds the current Snapshot of the mesh. Sources report whole
// States with Update; readers take the current Snapshot and wait on
// Changed. A Registry is safe for concurrent use.
type Registry struct {
	td          spiffeid.TrustDomain
	meshDefault policy.Default
	meshMode    policy.Mode

	mu  sync.Mutex // serializes Update
	cur atomic.Pointer[Snapshot]
}

// RegistryOption configures a Registry.
type RegistryOption func(*Registry)

// WithMeshDefaultMode sets the mode of the mesh default (default
// Enforce): with Audit, the mesh default only reports what it would deny
// (see policy.Engine).
func WithMeshDefaultMode(m policy.Mode) RegistryOption {
	return func(r *Registry) { r.meshMode = m }
}

// NewRegistry returns a Registry for trust domain td whose services fall
// back to meshDefault where no policy and no namespace default applies. Its
// first Snapshot is empty, with Version 0.
func NewRegistry(td spiffeid.TrustDomain, meshDefault policy.Default, opts ...RegistryOption) (*Registry, error) {
	r := &Registry{td: td, meshDefault: meshDefault}
	for _, o := range opts {
		o(r)
	}
	eng, err := policy.NewEngine(policy.Config{TrustDomain: td, MeshDefault: meshDefault, MeshDefaultMode: r.meshMode})
	if err != nil {
		return nil, fmt.Errorf("new registry: %w", err)
	}
	r.cur.Store(&Snapshot{td: td, meshDefault: meshDefault, meshMode: r.meshMode, index: map[ServiceKey]int{}, engine: eng, changed: make(chan struct{})})
	return r, nil
}

// TrustDomain returns the registry's trust domain.
func (r *Registry) TrustDomain() spiffeid.TrustDomain { return r.td }

// MeshDefault returns the registry's mesh-wide default policy.
func (r *Registry) MeshDefault() policy.Default { return r.meshDefault }

// MeshDefaultMode returns the mode of the registry's mesh-wide default
// (empty: Enforce).
func (r *Registry) MeshDefaultMode() policy.Mode { return r.meshMode }

// Snapshot returns the current snapshot; it never changes.
func (r *Registry) Snapshot() *Snapshot { return r.cur.Load() }

// Changed returns a channel closed when a snapshot newer than the current
// one is installed. To pair it with a snapshot without a race, use
// Snapshot().Changed().
func (r *Registry) Changed() <-chan struct{} { return r.cur.Load().Changed() }

// Update validates st and, if it is valid, installs a new Snapshot built
// from a copy of it, with the next Version, and closes the previous
// snapshot's Changed channel. An invalid State leaves the current snapshot
// in place; the error (wrapping ErrInvalidState) lists every problem.
//
// Empty service namespaces mean "default"; a zero TargetPort means Port.
// Remote services become Services (see RemoteService); one whose name or
// addresses another service holds is left out and listed in the
// Snapshot's RefusedRemoteServices, without failing the update.
func (r *Registry) Update(st State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.cur.Load()
	next, err := r.build(st)
	if err != nil {
		return err
	}
	next.version = prev.version + 1
	r.cur.Store(next)
	close(prev.changed)
	return nil
}

func (r *Registry) build(st State) (*Snapshot, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidState, fmt.Sprintf(format, args...)))
	}
	nsDefaults := make(map[string]policy.Default)
	nsModes := make(map[string]policy.Mode)
	seenNS := make(map[string]bool)
	for i, ns := range st.Namespaces {
		switch {
		case !dnsLabel(namespaceRE, ns.Name):
			bad("namespaces[%d]: %q is not a valid namespace name (lower-case DNS label)", i, ns.Name)
		case seenNS[ns.Name]:
			bad("namespace %s is listed twice", ns.Name)
		}
		seenNS[ns.Name] = true
		if ns.DefaultPolicyMode != "" {
			m, err := policy.ParseDefaultMode(ns.DefaultPolicyMode)
			if err != nil {
				bad("namespace %s: defaultPolicyMode: %v", ns.Name, err)
			}
			nsModes[ns.Name] = m
		}
		if ns.DefaultPolicy != "" {
			d, err := wire.ParseDefault(ns.DefaultPolicy)
			if err != nil {
				bad("namespace %s: defaultPolicy: %v", ns.Name, err)
				continue
			}
			nsDefaults[ns.Name] = d
		}
	}

	services := make([]Service, 0, len(st.Services))
	index := make(map[ServiceKey]int, len(st.Services))
	for i := range st.Services {
		s := st.Services[i].clone()
		if s.Key.Namespace == "" {
			s.Key.Namespace = "default"
		}
		ref := s.Key.String()
		if s.Key.Name == "" {
			ref = fmt.Sprintf("services[%d]", i)
		}
		n := len(errs)
		r.checkService(&s, func(format string, args ...any) { bad(ref+": "+format, args...) })
		if len(errs) > n {
			continue
		}
		if _, dup := index[s.Key]; dup {
			bad("service %s is listed twice", ref)
			continue
		}
		index[s.Key] = len(services)
		services = append(services, s)
	}
	services, refused := r.addRemoteServices(&st, services, index, bad)

	policies := make([]policy.AccessPolicy, len(st.Policies))
	seenPol := make(map[string]bool)
	for i := range st.Policies {
		policies[i] = *st.Policies[i].DeepCopy()
		ns := cmpOr(policies[i].Namespace, "default")
		ref := ns + "/" + policies[i].Name
		if policies[i].Name != "" && seenPol[ref] {
			bad("AccessPolicy %s is listed twice", ref)
		}
		seenPol[ref] = true
	}
	eng, err := policy.NewEngine(policy.Config{
		TrustDomain: r.td, MeshDefault: r.meshDefault, MeshDefaultMode: r.meshMode,
		NamespaceDefaults: nsDefaults, NamespaceDefaultModes: nsModes, Policies: policies,
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrInvalidState, err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	slices.SortFunc(services, func(a, b Service) int { return compareKeys(a.Key, b.Key) })
	for i, s := range services {
		index[s.Key] = i
	}
	namespaces := slices.Clone(st.Namespaces)
	slices.SortFunc(namespaces, func(a, b Namespace) int { return strings.Compare(a.Name, b.Name) })
	return &Snapshot{
		td: r.td, meshDefault: r.meshDefault, meshMode: r.meshMode,
		services: services, index: index, namespaces: namespaces, policies: policies, refused: refused,
		nsDefaults: nsDefaults, nsModes: nsModes, engine: eng, changed: make(chan struct{}),
	}, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkService normalizes s in place and reports its problems to bad.
func (r *Registry) checkService(s *Service, bad func(format string, args ...any)) {
	if !dnsLabel(serviceRE, s.Key.Name) {
		bad("name %q is not a valid Service name (lower-case DNS label starting with a letter)", s.Key.Name)
	}
	if !dnsLabel(namespaceRE, s.Key.Namespace) {
		bad("namespace %q is not a valid namespace name (lower-case DNS label)", s.Key.Namespace)
	}
	for i, ip := range s.ClusterIPs {
		if !ip.IsValid() {
			bad("clusterIPs[%d] is not a valid IP address", i)
		}
	}
	checkPorts(s.Ports, bad)
	for i, e := range s.Endpoints {
		if !e.Addr.IsValid() {
			bad("endpoints[%d]: address is missing or invalid", i)
		}
		id, err := e.Identity(r.td, s.Key.Namespace)
		switch {
		case err != nil:
			bad("endpoints[%d]: %v", i, err)
		case id.TrustDomain() != r.td:
			bad("endpoints[%d]: identity %s is outside trust domain %s", i, id, r.td.Name())
		}
	}
}

// Snapshot is one immutable, versioned view of the registry. Values it
// returns share memory with it and must not be modified.
type Snapshot struct {
	version     uint64
	td          spiffeid.TrustDomain
	meshDefault policy.Default
	meshMode    policy.Mode
	services    []Service // sorted by key; remote services among them
	index       map[ServiceKey]int
	refused     []Refusal // remote services left out
	namespaces  []Namespace
	policies    []policy.AccessPolicy
	nsDefaults  map[string]policy.Default
	nsModes     map[string]policy.Mode
	engine      *policy.Engine
	changed     chan struct{}
}

// Version increases with every snapshot the Registry installs; the empty
// snapshot of a new Registry is 0.
func (s *Snapshot) Version() uint64 { return s.version }

// Changed is closed when a newer snapshot replaces this one.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// TrustDomain is the mesh's trust domain.
func (s *Snapshot) TrustDomain() spiffeid.TrustDomain { return s.td }

// Service returns the service named key.
func (s *Snapshot) Service(key ServiceKey) (*Service, bool) {
	i, ok := s.index[key]
	if !ok {
		return nil, false
	}
	return &s.services[i], true
}

// Services returns every service, sorted by namespace then name.
func (s *Snapshot) Services() []Service { return slices.Clone(s.services) }

// Namespaces returns the namespaces the source listed, sorted by name.
func (s *Snapshot) Namespaces() []Namespace { return slices.Clone(s.namespaces) }

// Policies returns the AccessPolicy objects, in the order reported.
func (s *Snapshot) Policies() []policy.AccessPolicy { return slices.Clone(s.policies) }

// NamespaceDefaults returns the namespace default overrides.
func (s *Snapshot) NamespaceDefaults() map[string]policy.Default { return maps.Clone(s.nsDefaults) }

// NamespaceDefaultModes returns the modes the namespaces set for their
// defaults (tether.dev/default-policy-mode).
func (s *Snapshot) NamespaceDefaultModes() map[string]policy.Mode { return maps.Clone(s.nsModes) }

// MeshDefaultMode returns the mode of the mesh default (empty: Enforce).
func (s *Snapshot) MeshDefaultMode() policy.Mode { return s.meshMode }

// Engine returns the policy engine for this snapshot's policies, mesh
// default and namespace defaults.
func (s *Snapshot) Engine() *policy.Engine { return s.engine }

// Reachable returns the services src may reach on at least one port, sorted.
func (s *Snapshot) Reachable(src spiffeid.ID) []ServiceKey {
	var keys []ServiceKey
	for _, svc := range s.services {
		for _, p := range svc.Ports {
			if s.engine.Decide(src, svc.Key.Namespace, svc.Key.Name, p.Port).Allowed {
				keys = append(keys, svc.Key)
				break
			}
		}
	}
	return keys
}

// Sources returns the identities the snapshot knows of, sorted: those of
// every endpoint of this mesh's services, plus the service accounts and SPIFFE IDs that policies
// name. (A namespace source names no single identity.)
func (s *Snapshot) Sources() []spiffeid.ID {
	var ids []spiffeid.ID
	for i := range s.services {
		if s.services[i].Remote.IsZero() { // not workloads of this mesh
			ids = append(ids, s.services[i].Identities(s.td)...)
		}
	}
	for _, p := range s.policies {
		for _, src := range p.Spec.Sources {
			switch {
			case src.ServiceAccount != nil:
				ns := cmpOr(src.ServiceAccount.Namespace, cmpOr(p.Namespace, "default"))
				if id, err := wire.WorkloadID(s.td, ns, src.ServiceAccount.Name); err == nil {
					ids = append(ids, id)
				}
			case src.SpiffeID != "":
				if id, err := spiffeid.FromString(src.SpiffeID); err == nil {
					ids = append(ids, id)
				}
			}
		}
	}
	return sortIDs(ids)
}

// Pair is an allowed edge of the mesh: Source may reach Ports of Service,
// by Rule.
type Pair struct {
	Source  spiffeid.ID
	Service ServiceKey
	Ports   []uint16
	Rule    string
}

// AllowedPairs decides every known source (see Sources) against every
// port of every service and returns the allowed ones, one Pair per source,
// service and rule, sorted by source then service.
func (s *Snapshot) AllowedPairs() []Pair {
	var pairs []Pair
	for _, src := range s.Sources() {
		for _, svc := range s.services {
			byRule := make(map[string]int)
			for _, p := range svc.Ports {
				d := s.engine.Decide(src, svc.Key.Namespace, svc.Key.Name, p.Port)
				if !d.Allowed {
					continue
				}
				if i, ok := byRule[d.Rule]; ok {
					pairs[i].Ports = append(pairs[i].Ports, p.Port)
					continue
				}
				byRule[d.Rule] = len(pairs)
				pairs = append(pairs, Pair{Source: src, Service: svc.Key, Ports: []uint16{p.Port}, Rule: d.Rule})
			}
		}
	}
	for i := range pairs {
		slices.Sort(pairs[i].Ports)
	}
	return pairs
}
