package cli_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// intermediateExpiry is the INTERMEDIATE EXPIRES column of the active
// generation in `tether ca status` output.
func intermediateExpiry(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\d+\s+active\s+\S+\s+\S+\s+(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no active generation in status output:\n%s", out)
	}
	return m[1]
}

// TestRenewIntermediateCommand: `tether ca rotate renew-intermediate`
// renews the signing intermediate of a real tether-ca now.
func TestRenewIntermediateCommand(t *testing.T) {
	_, sock, _ := startCA(t)
	out, errOut, code := run(t, "ca", "status", "--socket", sock)
	if code != 0 {
		t.Fatalf("status: code %d err %q", code, errOut)
	}
	before := intermediateExpiry(t, out)
	time.Sleep(1100 * time.Millisecond) // the status shows whole seconds
	out, errOut, code = run(t, "ca", "rotate", "renew-intermediate", "--socket", sock)
	if code != 0 || !strings.Contains(out, "renew-intermediate: done") {
		t.Fatalf("renew-intermediate: code %d out %q err %q", code, out, errOut)
	}
	if after := intermediateExpiry(t, out); after <= before {
		t.Fatalf("intermediate expiry %s after renew-intermediate, was %s", after, before)
	}
}

// TestStatusSaysOverdue: a tether-ca with --auto-rotate=false whose root
// reached half its life 2h ago. Before, `tether ca status` showed that past
// step as "next scheduled step"; now it says it is overdue and the
// operator's to take. The intermediate, also past its renewal time when the
// CA starts, is renewed by the CA itself (routine, regardless of
// --auto-rotate).
func TestStatusSaysOverdue(t *testing.T) {
	dir := t.TempDir()
	// Root: prepare due 8h after creation; intermediate: renewal due 8h
	// after creation, valid until 12h.
	const rootTTL, interTTL = 16 * time.Hour, 12 * time.Hour
	// The CA's state as if it had been created 10h ago.
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		Store: store, Clock: testutil.NewOffsetClock(-10 * time.Hour), RootTTL: rootTTL, IntermediateTTL: interTTL})
	if err != nil {
		t.Fatal(err)
	}
	oldInter := old.Status().Generations[0].IntermediateNotAfter
	if st := old.Status(); !st.IntermediateRenewalAt.Before(time.Now()) || !st.Generations[0].IntermediateNotAfter.After(time.Now()) {
		t.Fatalf("setup: intermediate renewal due %s, intermediate valid until %s: want overdue, still valid", st.IntermediateRenewalAt, st.Generations[0].IntermediateNotAfter)
	}
	c := caConfig(dir)
	c.IntermediateTTL, c.RootTTL, c.TickInterval, c.AutoRotate = interTTL, rootTTL, 200*time.Millisecond, false
	runCA(t, c)
	sock := filepath.Join(dir, "admin.sock")
	testutil.Eventually(t, "admin socket", 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	var out string
	testutil.Eventually(t, "intermediate renewed by the CA with --auto-rotate=false", 10*time.Second, func() bool {
		var code int
		out, _, code = run(t, "ca", "status", "--socket", sock)
		exp, err := time.Parse(time.RFC3339, intermediateExpiry(t, out))
		return code == 0 && err == nil && exp.After(oldInter) // now it ends with the root, 6h from now

	})
	if !strings.Contains(out, "next step: prepare OVERDUE since") || !strings.Contains(out, "automatic rotation is off: run `tether ca rotate prepare`") {
		t.Fatalf("status does not say the root step is overdue and manual:\n%s", out)
	}
	if strings.Contains(out, "next scheduled step") {
		t.Fatalf("status shows an overdue step as scheduled:\n%s", out)
	}
	if gens := regexp.MustCompile(`(?m)^\d+\s+(prepared|active|superseded)\s`).FindAllString(out, -1); len(gens) != 1 {
		t.Fatalf("the CA took a root-rotation step with --auto-rotate=false:\n%s", out)
	}
}
