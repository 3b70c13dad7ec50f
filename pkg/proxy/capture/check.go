package capture

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// Sentinel errors for the two things an operator most often has to fix.
var (
	// ErrIptablesNotFound means an iptables tool is not on PATH.
	ErrIptablesNotFound = errors.New("iptables not found: install the iptables package")
	// ErrNeedNetAdmin means the process may not change the nat table.
	ErrNeedNetAdmin = errors.New("needs NET_ADMIN: run as root or add the NET_ADMIN capability")
)

// capNetAdmin is CAP_NET_ADMIN's bit in /proc/<pid>/status CapEff.
const capNetAdmin = 12

// Check is the preflight of `tether-sidecar init`: it fails with
// ErrIptablesNotFound if a tool Apply needs for c is not on PATH, and with
// ErrNeedNetAdmin if the process lacks CAP_NET_ADMIN. It changes nothing.
func Check(c Config) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("transparent capture needs Linux, not %s: use explicit mode", runtime.GOOS)
	}
	tools := []string{ipv4.save, ipv4.restore}
	if c.IPv6 {
		tools = append(tools, ipv6.save, ipv6.restore)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w (%s is not on PATH)", ErrIptablesNotFound, tool)
		}
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	ok, err := hasCap(string(status), capNetAdmin)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w (uid %d; CAP_NET_ADMIN is not in the effective set)", ErrNeedNetAdmin, os.Geteuid())
	}
	return nil
}

// hasCap reports whether the CapEff line of a /proc/<pid>/status text has bit set.
func hasCap(status string, bit uint) (bool, error) {
	for line := range strings.Lines(status) {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		mask, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return false, fmt.Errorf("read capabilities: CapEff %q is not a hex mask: %w", v, err)
		}
		return mask&(1<<bit) != 0, nil
	}
	return false, errors.New("read capabilities: no CapEff line in /proc/self/status")
}
