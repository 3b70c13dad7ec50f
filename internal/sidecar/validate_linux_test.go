//go:build linux

package sidecar

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// validateHelperArg as the first argument makes the test binary run
// ValidateRedirect with the rest, as tether-sidecar validate-redirect does,
// so the tests can run it as an unprivileged UID inside a namespace.
const validateHelperArg = "tether-validate-helper"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == validateHelperArg {
		os.Exit(ValidateRedirect(context.Background(), os.Args[2:], os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

// validatorPod is a pod network namespace with a default route (so a
// connection to a documentation address leaves the pod unless the rules
// redirect it), optionally with an IPv6 address and route too.
func validatorPod(t *testing.T, ipv6 bool) *netns.NS {
	pod, other, _ := netns.PodPair(t, "validate", netip.MustParsePrefix("10.216.0.0/24"))
	_ = other
	pod.Run(t, "ip", "route", "add", "default", "via", "10.216.0.3")
	if ipv6 {
		pod.AddAddr(t, "eth0", netip.MustParsePrefix("fd00:216::2/64"))
		other.AddAddr(t, "eth0", netip.MustParsePrefix("fd00:216::3/64"))
		pod.Run(t, "ip", "-6", "route", "add", "default", "via", "fd00:216::3")
	}
	return pod
}

// runValidator runs validate-redirect in pod as uid and returns its output
// and whether it passed.
func runValidator(t *testing.T, pod *netns.NS, exe string, uid int, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := pod.Output(ctx, uid, append([]string{exe, validateHelperArg, "--timeout", "2s"}, args...)...)
	return out, err == nil
}

func applyRules(t *testing.T, pod *netns.NS, c capture.Config) {
	t.Helper()
	if err := capture.Apply(context.Background(), c, capture.ExecRunner{Start: pod.StartCmd}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// TestValidateRedirectInNetns runs the validator, unprivileged, in real
// network namespaces: it passes only where the capture rules are in place
// for every address family the pod has, and otherwise fails with the
// message that names the node agent.
func TestValidateRedirectInNetns(t *testing.T) {
	netns.RequireRoot(t)
	exe := netns.Executable(t)
	t.Setenv(nodeNameEnv, "node-7")
	const wantFail = "NOT redirected to the sidecar"

	t.Run("no rules: fails closed naming the node agent", func(t *testing.T) {
		pod := validatorPod(t, false)
		out, ok := runValidator(t, pod, exe, inject.ValidatorUID)
		if ok || !strings.Contains(out, wantFail) || !strings.Contains(out, "DaemonSet tether-cni-node") || !strings.Contains(out, `node "node-7"`) {
			t.Fatalf("validator without rules: passed=%v\n%s", ok, out)
		}
		t.Logf("the validator's message:\n%s", out)
	})
	t.Run("rules present: passes", func(t *testing.T) {
		pod := validatorPod(t, false)
		applyRules(t, pod, capture.DefaultConfig())
		out, ok := runValidator(t, pod, exe, inject.ValidatorUID)
		if !ok || !strings.Contains(out, "a connection to 192.0.2.1:15002 reached the capture port 127.0.0.1:15001") {
			t.Fatalf("validator with rules: passed=%v\n%s", ok, out)
		}
	})
	t.Run("rules removed again: fails", func(t *testing.T) {
		pod := validatorPod(t, false)
		applyRules(t, pod, capture.DefaultConfig())
		if err := capture.Cleanup(context.Background(), capture.ExecRunner{Start: pod.StartCmd}); err != nil {
			t.Fatal(err)
		}
		if out, ok := runValidator(t, pod, exe, inject.ValidatorUID); ok || !strings.Contains(out, wantFail) {
			t.Fatalf("validator after cleanup: passed=%v\n%s", ok, out)
		}
	})
	t.Run("exclusions honoured", func(t *testing.T) {
		// The pod excludes the first test address and port: the validator
		// tests another destination, which the rules still capture.
		pod := validatorPod(t, false)
		c := capture.DefaultConfig()
		c.ExcludeOutboundPorts = []int{15002}
		c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		applyRules(t, pod, c)
		out, ok := runValidator(t, pod, exe, inject.ValidatorUID, "--exclude-outbound-ports", "15002", "--exclude-outbound-cidrs", "192.0.2.0/24")
		if !ok || !strings.Contains(out, "198.51.100.1:15003") {
			t.Fatalf("validator with exclusions: passed=%v\n%s", ok, out)
		}
		// Without being told, it would test an excluded destination and
		// fail: the exclusions decide what is captured.
		if out, ok := runValidator(t, pod, exe, inject.ValidatorUID); ok || !strings.Contains(out, wantFail) {
			t.Fatalf("validator testing an excluded destination: passed=%v\n%s", ok, out)
		}
		out, ok = runValidator(t, pod, exe, inject.ValidatorUID, "--exclude-outbound-cidrs", "0.0.0.0/0")
		if ok || !strings.Contains(out, "cannot be checked") {
			t.Fatalf("validator with everything excluded: passed=%v\n%s", ok, out)
		}
	})
	t.Run("as the sidecar's UID: refused", func(t *testing.T) {
		// UID 1337 is exempt from capture: a check run as it proves
		// nothing, so it refuses to run.
		pod := validatorPod(t, false)
		applyRules(t, pod, capture.DefaultConfig())
		if out, ok := runValidator(t, pod, exe, inject.ProxyUID); ok || !strings.Contains(out, "exempt") {
			t.Fatalf("validator as UID %d: passed=%v\n%s", inject.ProxyUID, ok, out)
		}
	})
	t.Run("capture port taken: fails", func(t *testing.T) {
		pod := validatorPod(t, false)
		applyRules(t, pod, capture.DefaultConfig())
		l, err := pod.Listen("tcp", "127.0.0.1:15001")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if out, ok := runValidator(t, pod, exe, inject.ValidatorUID); ok || !strings.Contains(out, "something else holds it") {
			t.Fatalf("validator with the capture port taken: passed=%v\n%s", ok, out)
		}
	})
	t.Run("dual-stack pod, IPv4 rules only: fails", func(t *testing.T) {
		pod := validatorPod(t, true)
		applyRules(t, pod, capture.DefaultConfig())
		out, ok := runValidator(t, pod, exe, inject.ValidatorUID)
		if ok || !strings.Contains(out, "[2001:db8::1]:15002") || !strings.Contains(out, wantFail) {
			t.Fatalf("dual-stack pod with IPv4 rules only: passed=%v\n%s", ok, out)
		}
	})
	t.Run("dual-stack pod, both families: passes", func(t *testing.T) {
		pod := validatorPod(t, true)
		c := capture.DefaultConfig()
		c.IPv6 = true
		applyRules(t, pod, c)
		out, ok := runValidator(t, pod, exe, inject.ValidatorUID)
		if !ok || !strings.Contains(out, "[2001:db8::1]:15002 reached the capture port [::1]:15001") {
			t.Fatalf("dual-stack pod with both families: passed=%v\n%s", ok, out)
		}
	})
}

// The validator and the injector agree on the node-name variable.
func TestValidatorNodeNameEnv(t *testing.T) {
	if nodeNameEnv != inject.NodeNameEnv {
		t.Fatalf("validator reads %s, the injector sets %s", nodeNameEnv, inject.NodeNameEnv)
	}
}
