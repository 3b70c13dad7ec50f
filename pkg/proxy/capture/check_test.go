package capture

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

func TestCheckWithoutIptables(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Check needs Linux")
	}
	t.Setenv("PATH", t.TempDir())
	err := Check(DefaultConfig())
	if !errors.Is(err, ErrIptablesNotFound) {
		t.Fatalf("Check with an empty PATH = %v; want ErrIptablesNotFound", err)
	}
	if want := "iptables not found: install the iptables package"; !strings.Contains(err.Error(), want) {
		t.Fatalf("Check error %q does not say %q", err, want)
	}
}

func TestHasCap(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   bool
		err    bool
	}{
		{"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n", true, false},
		{"CapEff:\t0000000000001000\n", true, false},
		{"CapEff:\t0000000000000fff\n", false, false},
		{"CapEff:\t0000000000000000\n", false, false},
		{"CapEff:\tzz\n", false, true},
		{"Name:\tx\n", false, true},
	} {
		got, err := hasCap(tc.status, capNetAdmin)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("hasCap(%q) = %v, %v; want %v, error %v", tc.status, got, err, tc.want, tc.err)
		}
	}
}
