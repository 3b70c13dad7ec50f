package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// sidecarArgs returns the flags every tether-sidecar of a run gets, beside
// its --inbound, --outbound and --allow: the CA, its join token, no access
// log, its admin address, its own Workload API socket in dir, and warnings
// only. Several sidecars run on one host here, so a
// flag the binary has that listens on a fixed address or socket by default
// (an admin or debug listener added after this tool was written, say) gets
// an address or socket of its own too; which flags a binary has is read
// from its -help, so that an older binary (-baseline-bin) and a newer one
// both start. A binary that lacks one of the flags set here is refused with
// the flag's name.
func (e *env) sidecarArgs(ctx context.Context, bin, dir, name, token, admin string) ([]string, error) {
	flags, err := e.flagsOf(ctx, bin)
	if err != nil {
		return nil, err
	}
	set := [][2]string{
		{"ca", e.ca.addr}, {"bundle", e.ca.bundle}, {"join-token", token}, {"access-log", "off"},
		{"admin-listen", admin}, {"workload-socket", filepath.Join(dir, name+".sock")}, {"log-level", "warn"},
	}
	var args []string
	for _, f := range set {
		if _, ok := flags[f[0]]; !ok {
			return nil, fmt.Errorf("%s has no --%s flag, which this benchmark sets", bin, f[0])
		}
		args = append(args, "--"+f[0], f[1])
	}
	extra, err := extraListeners(flags, dir, name)
	if err != nil {
		return nil, err
	}
	return append(args, extra...), nil
}

// notExplicit are the sidecar's listeners of transparent mode and of its
// DNS server, which are off in explicit mode.
var notExplicit = []string{"capture-inbound-listen", "capture-outbound-listen", "dns-listen"}

// extraListeners gives every other flag named *-listen whose default is an
// address with a fixed port a free loopback address, and every flag named
// *-socket with a default path a socket in dir: two sidecars on one host
// would otherwise both bind the default. They are sorted by name.
func extraListeners(flags map[string]string, dir, name string) ([]string, error) {
	var out []string
	for _, f := range slices.Sorted(func(yield func(string) bool) {
		for k := range flags {
			if !yield(k) {
				return
			}
		}
	}) {
		def := flags[f]
		if slices.Contains(notExplicit, f) || f == "admin-listen" || f == "workload-socket" {
			continue
		}
		switch {
		case strings.HasSuffix(f, "-listen"):
			if _, port, err := net.SplitHostPort(def); err != nil || port == "" || port == "0" {
				continue
			}
			a, err := freeAddr()
			if err != nil {
				return nil, err
			}
			out = append(out, "--"+f, a)
		case strings.HasSuffix(f, "-socket") && def != "":
			out = append(out, "--"+f, filepath.Join(dir, name+"-"+f+".sock"))
		}
	}
	return out, nil
}

// flagsOf returns the flags of the tether-sidecar at bin (name → default,
// "" when none), read once per binary from its -help.
func (e *env) flagsOf(ctx context.Context, bin string) (map[string]string, error) {
	if f, ok := e.sidecarFlags[bin]; ok {
		return f, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// -help exits 0 or 2 depending on the binary's main; what counts is
	// the usage it prints.
	out, _ := exec.CommandContext(ctx, bin, "-help").CombinedOutput()
	flags := parseUsage(string(out))
	if _, ok := flags["admin-listen"]; !ok {
		return nil, fmt.Errorf("%s -help: no usage with an -admin-listen flag: %q", bin, firstLine(string(out)))
	}
	if e.sidecarFlags == nil {
		e.sidecarFlags = map[string]map[string]string{}
	}
	e.sidecarFlags[bin] = flags
	return flags, nil
}

var (
	usageFlag    = regexp.MustCompile(`^  -([a-z0-9][a-z0-9-]*)(?:[ \t].*)?$`)
	usageDefault = regexp.MustCompile(`\(default "?([^")]*)"?\)$`)
)

// parseUsage reads the flags and their defaults from the usage text Go's
// flag package prints:
//
//	-admin-listen string
//	  	admin address … (default ":15020")
func parseUsage(usage string) map[string]string {
	flags := map[string]string{}
	var last string
	sc := bufio.NewScanner(strings.NewReader(usage))
	for sc.Scan() {
		line := sc.Text()
		if m := usageFlag.FindStringSubmatch(line); m != nil {
			last = m[1]
			flags[last] = ""
		}
		if m := usageDefault.FindStringSubmatch(strings.TrimSpace(line)); m != nil && last != "" {
			flags[last] = m[1]
		}
	}
	return flags
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}
