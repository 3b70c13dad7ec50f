package version

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "1.2.3"
	s := String()
	if !strings.HasPrefix(s, "1.2.3") {
		t.Fatalf("String() = %q, want the version first", s)
	}
	if got := Release(s); got != "1.2.3" {
		t.Fatalf("Release(%q) = %q, want 1.2.3", s, got)
	}
	Version = strings.Repeat("9", 100)
	if n := len(String()); n != 64 {
		t.Fatalf("len(String()) = %d with a 100-byte version, want 64", n)
	}
}

func TestRelease(t *testing.T) {
	for in, want := range map[string]string{
		"0.1.0-dev+0123456789ab":   "0.1.0-dev",
		"0.1.0":                    "0.1.0",
		"0.1.0+0123456789ab-dirty": "0.1.0",
		"":                         "",
	} {
		if got := Release(in); got != want {
			t.Errorf("Release(%q) = %q, want %q", in, got, want)
		}
	}
}
