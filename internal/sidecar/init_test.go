package sidecar

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// fakeRunner records the iptables tools Init runs.
type fakeRunner struct {
	calls   []string
	restore []string
}

func (f *fakeRunner) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if strings.Contains(name, "restore") {
		f.restore = append(f.restore, string(stdin))
	}
	return nil, nil
}

func runInit(t *testing.T, r *fakeRunner, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	var runner = r
	if r == nil {
		code := Init(context.Background(), args, &out, &errb, nil)
		return out.String(), errb.String(), code
	}
	code := Init(context.Background(), args, &out, &errb, runner)
	return out.String(), errb.String(), code
}

func TestInitDryRun(t *testing.T) {
	out, errOut, code := runInit(t, nil, "--dry-run", "--exclude-inbound-ports", "9090,9091", "--exclude-outbound-cidrs", "10.96.0.0/12")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"--dport 9090 -j RETURN", "-d 10.96.0.0/12 -j RETURN", "--uid-owner 1337 -j RETURN", "REDIRECT --to-ports 15001", "REDIRECT --to-ports 15006", "--dport 15020 -j RETURN"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "15053") && !strings.Contains(out, "--dport 15053 -j RETURN") {
		t.Errorf("DNS is captured by default although the sidecar serves no DNS yet:\n%s", out)
	}
}

func TestInitAppliesAndCleansUp(t *testing.T) {
	r := &fakeRunner{}
	if _, errOut, code := runInit(t, r, "--exclude-outbound-ports", "5432"); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, errOut)
	}
	if len(r.restore) == 0 || !strings.Contains(strings.Join(r.restore, ""), "--dport 5432 -j RETURN") {
		t.Fatalf("apply did not restore the rules: calls %v", r.calls)
	}
	r2 := &fakeRunner{}
	if _, errOut, code := runInit(t, r2, "--cleanup"); code != 0 {
		t.Fatalf("cleanup: exit %d: %s", code, errOut)
	}
	if len(r2.calls) == 0 {
		t.Fatal("cleanup ran no iptables tool")
	}
}

func TestInitRefusesBadInput(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--exclude-inbound-ports", "0"}, 2, "out of range"},
		{[]string{"--exclude-inbound-ports", "http"}, 2, "exclude-inbound-ports"},
		{[]string{"--exclude-outbound-cidrs", "10.0.0.0/33"}, 2, "exclude-outbound-cidrs"},
		{[]string{"--proxy-uid", "0", "--dry-run"}, 1, "UID"},
		{[]string{"stray"}, 2, "unexpected arguments"},
	}
	for _, tc := range cases {
		_, errOut, code := runInit(t, &fakeRunner{}, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("init %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}
