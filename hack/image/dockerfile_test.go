package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDockerfileMatchesPreset checks that the Dockerfile (which cannot be
// built here) builds the same binaries from the same packages with the same
// flags, and has the same user, entrypoint and iptables, as the tether preset.
func TestDockerfileMatchesPreset(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	p := presets["tether"]

	loop := regexp.MustCompile(`for b in ([^;]+); do`).FindStringSubmatch(df)
	if loop == nil {
		t.Fatal("Dockerfile: no `for b in ...; do` loop building the binaries")
	}
	var fromDockerfile, fromPreset []string
	for _, pair := range strings.Fields(loop[1]) {
		dir, bin, _ := strings.Cut(pair, ":")
		fromDockerfile = append(fromDockerfile, "./cmd/"+dir+" "+bin)
	}
	for _, b := range p.binaries {
		fromPreset = append(fromPreset, b.pkg+" "+b.name)
	}
	slices.Sort(fromDockerfile)
	slices.Sort(fromPreset)
	if !slices.Equal(fromDockerfile, fromPreset) {
		t.Errorf("Dockerfile builds %q, the preset %q", fromDockerfile, fromPreset)
	}
	for _, flag := range []string{"-trimpath", "-tags=grpcnotrace", "-ldflags='-s -w'", "CGO_ENABLED=0", "COPY --from=build /out/ " + p.binDir + "/"} {
		if !strings.Contains(df, flag) {
			t.Errorf("Dockerfile lacks %q", flag)
		}
	}
	if user := lastInstruction(df, "USER"); user != p.user {
		t.Errorf("Dockerfile USER %q, preset %q", user, p.user)
	}
	var entry []string
	if err := json.Unmarshal([]byte(lastInstruction(df, "ENTRYPOINT")), &entry); err != nil || !slices.Equal(entry, p.entrypoint) {
		t.Errorf("Dockerfile ENTRYPOINT %q (%v), preset %q", entry, err, p.entrypoint)
	}
	// Debian's iptables package, whose alternatives default to the nft
	// backend, as iptablesNames does.
	if !regexp.MustCompile(`apt-get install [^\n]*\biptables\b`).MatchString(df) || !strings.Contains(df, "FROM debian:bookworm") {
		t.Error("Dockerfile does not install bookworm's iptables")
	}
	if iptablesNames["iptables-restore"] != "xtables-nft-multi" {
		t.Error("the preset's iptables-restore is not the nft backend, Debian's default")
	}
}

// lastInstruction returns the argument of the last Dockerfile instruction
// named instr (the final stage's).
func lastInstruction(df, instr string) string {
	var arg string
	for _, line := range strings.Split(df, "\n") {
		if rest, ok := strings.CutPrefix(line, instr+" "); ok {
			arg = strings.TrimSpace(rest)
		}
	}
	return arg
}
