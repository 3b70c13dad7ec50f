package capture

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrRulesNotInPlace is wrapped by Verify's error when the tables do not
// hold exactly the rules Apply would install.
var ErrRulesNotInPlace = errors.New("capture rules not in place")

// Verify reads the tables of the current network namespace (through r; nil
// means ExecRunner) and checks that the TETHER chains and the jumps into
// them are exactly those Apply installs for c, in order: a rule missing,
// added or moved is an error wrapping ErrRulesNotInPlace that names it.
// Rules outside the TETHER chains are not looked at. It changes nothing.
func Verify(ctx context.Context, c Config, r Runner) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if r == nil {
		r = ExecRunner{}
	}
	fams := []family{ipv4}
	if c.IPv6 {
		fams = append(fams, ipv6)
	}
	for _, f := range fams {
		for _, t := range tables(c, f) {
			out, err := r.Run(ctx, nil, f.save, "-t", t.name)
			if err != nil {
				return fmt.Errorf("read %s %s table: %w", f.name, t.name, classify(err))
			}
			if err := sameOwned(ownedByChain(t.rules), ownedByChain(ownedLines(string(out), t.name))); err != nil {
				return fmt.Errorf("%w: %s %s table: %w", ErrRulesNotInPlace, f.name, t.name, err)
			}
		}
	}
	return nil
}

// ownedLines returns the "-A ..." lines of table name in an iptables-save
// output that this package owns: rules of TETHER chains and jumps into them.
func ownedLines(out, name string) []string {
	var lines []string
	in := false
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			in = line == "*"+name
		case !in || !strings.HasPrefix(line, "-A "):
		default:
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			target, verb := f[len(f)-1], f[len(f)-2]
			jump := strings.HasPrefix(target, ChainPrefix) && (verb == "-j" || verb == "-g" || verb == "--jump" || verb == "--goto")
			if strings.HasPrefix(f[1], ChainPrefix) || jump {
				lines = append(lines, line)
			}
		}
	}
	return lines
}

// ownedByChain groups "-A CHAIN ..." lines by chain, keeping their order.
func ownedByChain(lines []string) map[string][]string {
	m := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) >= 2 {
			m[f[1]] = append(m[f[1]], l)
		}
	}
	return m
}

// sameOwned reports the first difference between the wanted and the found
// rules, chain by chain.
func sameOwned(want, got map[string][]string) error {
	chains := make([]string, 0, len(want)+len(got))
	for ch := range want {
		chains = append(chains, ch)
	}
	for ch := range got {
		if _, ok := want[ch]; !ok {
			chains = append(chains, ch)
		}
	}
	slices.Sort(chains)
	for _, ch := range chains {
		w, g := want[ch], got[ch]
		for i := range max(len(w), len(g)) {
			if i < len(w) && i < len(g) && w[i] == g[i] {
				continue
			}
			switch {
			case i < len(w) && !slices.Contains(g, w[i]):
				return fmt.Errorf("rule %q is missing", w[i])
			case i < len(g) && !slices.Contains(w, g[i]):
				return fmt.Errorf("rule %q is not one of Tether's", g[i])
			case i < len(g) && i < len(w):
				return fmt.Errorf("chain %s: rule %d is %q, want %q", ch, i+1, g[i], w[i])
			default:
				return fmt.Errorf("chain %s holds a rule twice", ch)
			}
		}
	}
	return nil
}
