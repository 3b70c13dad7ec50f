package capture

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// savedRunner answers iptables-save with a fixed table per tool and table.
type savedRunner map[string]string

func (s savedRunner) Run(_ context.Context, _ []byte, name string, args ...string) ([]byte, error) {
	return []byte(s[name+" "+args[len(args)-1]]), nil
}

// tableText is what iptables-save would print for t with foreign lines.
func tableText(t table, foreign ...string) string {
	var b strings.Builder
	b.WriteString("*" + t.name + "\n:OUTPUT ACCEPT [0:0]\n")
	for _, ch := range t.chains {
		b.WriteString(":" + ch + " - [0:0]\n")
	}
	for _, l := range foreign {
		b.WriteString(l + "\n")
	}
	for _, r := range t.rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func TestVerify(t *testing.T) {
	c := DefaultConfig()
	c.ExcludeOutboundPorts = []int{5432}
	nat, filter := build(c, ipv4), buildFilter(c, ipv4)
	good := savedRunner{"iptables-save nat": tableText(nat, "-A OUTPUT -p tcp -m tcp --dport 9999 -j KEEP_ME"), "iptables-save filter": tableText(filter)}
	if err := Verify(context.Background(), c, good); err != nil {
		t.Fatalf("Verify of the rules Apply installs: %v", err)
	}

	drop := func(tb table, i int) table {
		tb.rules = append(append([]string{}, tb.rules[:i]...), tb.rules[i+1:]...)
		return tb
	}
	swapped := nat
	swapped.rules = append([]string{}, nat.rules...)
	swapped.rules[0], swapped.rules[1] = swapped.rules[1], swapped.rules[0]
	for name, tc := range map[string]struct {
		nat, filter string
		want        string
	}{
		"rule deleted":        {tableText(drop(nat, 3)), tableText(filter), "is missing"},
		"jump deleted":        {tableText(drop(nat, len(nat.rules)-1)), tableText(filter), "is missing"},
		"rule added":          {tableText(nat, "-A TETHER_OUTPUT -p tcp -m tcp --dport 22 -j RETURN"), tableText(filter), "is not one of Tether's"},
		"rules reordered":     {tableText(swapped), tableText(filter), "rule 1 is"},
		"other config's rule": {tableText(build(DefaultConfig(), ipv4)), tableText(filter), "missing"},
		"nothing installed":   {"*nat\nCOMMIT\n", "", "is missing"},
	} {
		err := Verify(context.Background(), c, savedRunner{"iptables-save nat": tc.nat, "iptables-save filter": tc.filter})
		if !errors.Is(err, ErrRulesNotInPlace) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Verify = %v, want ErrRulesNotInPlace saying %q", name, err, tc.want)
		}
	}
	// RejectUDP: the filter table is checked too.
	c.RejectUDP = true
	if err := Verify(context.Background(), c, good); !errors.Is(err, ErrRulesNotInPlace) || !strings.Contains(err.Error(), "filter") {
		t.Errorf("Verify with RejectUDP and no filter rules = %v", err)
	}
}
