package flows

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// Bounds on what an Edge and a report may hold. They bound the memory an
// edge takes whatever a reporter sends, and they are checked by Validate.
const (
	// MaxIDLength bounds Source and Workload (a SPIFFE ID is at most 2048
	// bytes).
	MaxIDLength = 2048
	// MaxRuleLength bounds Rule; the sidecar cuts longer rules (Clip).
	MaxRuleLength = 512
	// MaxReportEdges bounds the edges of one report.
	MaxReportEdges = 4096
	// MaxReportBytes bounds the encoded size of one report.
	MaxReportBytes = 1 << 20
	// MaxClockSkew is how far in the future a reported LastSeen may be.
	MaxClockSkew = time.Minute
)

// ErrInvalid wraps every refusal of a malformed edge or report.
var ErrInvalid = errors.New("invalid flow report")

// ErrNotSeen wraps the refusal of an edge its reporter cannot have seen.
var ErrNotSeen = errors.New("flow report names what the reporter cannot have seen")

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Valid reports whether s is one of the sides.
func (s Side) Valid() bool { return s == Caller || s == Destination }

// Validate checks that k is well formed: a SPIFFE ID as Source, a
// destination that is exactly one of a service (DNS label namespace and
// name) or a workload (SPIFFE ID), a port, a decision, a side, and a rule
// of printable text within MaxRuleLength.
func (k Key) Validate() error {
	if err := checkID("source", k.Source); err != nil {
		return err
	}
	if k.Namespace != "" && !ValidNamespace(k.Namespace) {
		return fmt.Errorf("%w: namespace %q is not a DNS label", ErrInvalid, clipField(k.Namespace))
	}
	switch {
	case k.Service != "" && k.Workload != "":
		return fmt.Errorf("%w: edge names both service %q and workload %q; want one", ErrInvalid, clipField(k.Service), clipField(k.Workload))
	case k.Service != "":
		if k.Namespace == "" {
			return fmt.Errorf("%w: service %q has no namespace", ErrInvalid, clipField(k.Service))
		}
		if len(k.Service) > 63 || !dnsLabel.MatchString(k.Service) {
			return fmt.Errorf("%w: service %q is not a DNS label", ErrInvalid, clipField(k.Service))
		}
	case k.Workload != "":
		if err := checkID("workload", k.Workload); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: edge names neither a service nor a workload", ErrInvalid)
	}
	if k.Port == 0 {
		return fmt.Errorf("%w: port 0", ErrInvalid)
	}
	if !k.Decision.Valid() {
		return fmt.Errorf("%w: decision %q: want allow, deny or audit-deny", ErrInvalid, clipField(string(k.Decision)))
	}
	if !k.Side.Valid() {
		return fmt.Errorf("%w: side %q: want caller or destination", ErrInvalid, clipField(string(k.Side)))
	}
	if len(k.Rule) > MaxRuleLength {
		return fmt.Errorf("%w: rule is %d bytes long, at most %d", ErrInvalid, len(k.Rule), MaxRuleLength)
	}
	if !printable(k.Rule) {
		return fmt.Errorf("%w: rule %q holds a character that is not printable", ErrInvalid, clipField(k.Rule))
	}
	return nil
}

// ValidNamespace reports whether ns is a namespace name (a DNS label).
func ValidNamespace(ns string) bool { return len(ns) <= 63 && dnsLabel.MatchString(ns) }

func checkID(name, s string) error {
	if len(s) > MaxIDLength {
		return fmt.Errorf("%w: %s is %d bytes long, at most %d", ErrInvalid, name, len(s), MaxIDLength)
	}
	if _, err := spiffeid.FromString(s); err != nil {
		return fmt.Errorf("%w: %s %q is not a SPIFFE ID: %v", ErrInvalid, name, clipField(s), err)
	}
	return nil
}

// Validate checks e's key and counts: at least one connection, FirstSeen
// no later than LastSeen, and LastSeen no later than now plus
// MaxClockSkew.
func (e Edge) Validate(now time.Time) error {
	if err := e.Key.Validate(); err != nil {
		return err
	}
	if e.Connections == 0 {
		return fmt.Errorf("%w: edge with no connections", ErrInvalid)
	}
	if e.FirstSeen.IsZero() || e.LastSeen.IsZero() || e.LastSeen.Before(e.FirstSeen) {
		return fmt.Errorf("%w: first seen %s, last seen %s: want both, first no later than last", ErrInvalid,
			e.FirstSeen.UTC().Format(time.RFC3339), e.LastSeen.UTC().Format(time.RFC3339))
	}
	if e.LastSeen.After(now.Add(MaxClockSkew)) {
		return fmt.Errorf("%w: last seen %s is in the future (now %s)", ErrInvalid,
			e.LastSeen.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// ValidateReport checks a report's edges: at most MaxReportEdges, each
// valid. The first fault refuses the whole report.
func ValidateReport(edges []Edge, now time.Time) error {
	if len(edges) > MaxReportEdges {
		return fmt.Errorf("%w: %d edges, at most %d", ErrInvalid, len(edges), MaxReportEdges)
	}
	for i, e := range edges {
		if err := e.Validate(now); err != nil {
			return fmt.Errorf("edge %d: %w", i, err)
		}
	}
	return nil
}

// Serves says whether the workload id serves port of service
// namespace/name (is an identity of its endpoints, and port is one of
// its ports).
type Serves func(id spiffeid.ID, namespace, name string, port uint16) bool

// CheckReporter refuses, with an error wrapping ErrNotSeen, an edge that
// reporter cannot have seen: a caller-side edge whose Source is not the
// reporter, a destination-side edge to a service the reporter does not
// serve (serves), or to a workload that is not the reporter (or in
// another namespace than the reporter's).
func CheckReporter(reporter spiffeid.ID, e Edge, serves Serves) error {
	switch e.Side {
	case Caller:
		if e.Source != reporter.String() {
			return fmt.Errorf("%w: %s reported a call made by %s", ErrNotSeen, reporter, clipField(e.Source))
		}
	case Destination:
		if e.Workload != "" {
			if e.Workload != reporter.String() {
				return fmt.Errorf("%w: %s reported a call to workload %s", ErrNotSeen, reporter, clipField(e.Workload))
			}
			if ns, _ := wire.WorkloadNamespace(reporter); e.Namespace != ns {
				return fmt.Errorf("%w: %s reported a call to itself in namespace %q, but its namespace is %q", ErrNotSeen, reporter, e.Namespace, ns)
			}
			return nil
		}
		if !serves(reporter, e.Namespace, e.Service, e.Port) {
			return fmt.Errorf("%w: %s reported a call to %s/%s:%d, which it does not serve", ErrNotSeen, reporter, e.Namespace, e.Service, e.Port)
		}
	default:
		return fmt.Errorf("%w: side %q", ErrInvalid, clipField(string(e.Side)))
	}
	return nil
}

// Clip cuts a rule to MaxRuleLength bytes on a rune boundary, marking the
// cut, and replaces what is not printable: the sidecar records rules
// through it so that every edge it reports is valid.
func Clip(rule string) string {
	if !printable(rule) {
		rule = strings.Map(func(r rune) rune {
			if r == utf8.RuneError || !unicode.IsPrint(r) {
				return '?'
			}
			return r
		}, strings.ToValidUTF8(rule, "?"))
	}
	if len(rule) <= MaxRuleLength {
		return rule
	}
	cut := MaxRuleLength - len("…")
	for cut > 0 && !utf8.RuneStart(rule[cut]) {
		cut--
	}
	return rule[:cut] + "…"
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// clipField shortens a field quoted in an error.
func clipField(s string) string {
	if len(s) > 80 {
		return strings.ToValidUTF8(s[:80], "") + "…"
	}
	return s
}
