package cliflag_test

import (
	"bytes"
	"errors"
	"flag"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/version"
)

func TestPrintVersion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"--version"}, true},
		{[]string{"-version"}, true},
		{[]string{"--listen", ":1", "--version=true"}, true},
		{[]string{"init", "--version"}, true},
		{nil, false},
		{[]string{"--listen", ":1"}, false},
		{[]string{"--", "--version"}, false},
		{[]string{"--version=false"}, false},
	} {
		var out bytes.Buffer
		if got := cliflag.PrintVersion(tc.args, &out); got != tc.want || (got && out.String() != version.String()+"\n") || (!got && out.Len() > 0) {
			t.Errorf("%q: %v, printed %q; want %v", tc.args, got, out.String(), tc.want)
		}
	}
}

func TestPrintFlags(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("listen", ":8443", "address of the `API`")
	fs.String("dir", "", "a directory")
	fs.Bool("auto", true, "do it\non two lines")
	fs.Bool("quiet", false, "say less")
	fs.Duration("tick", 10*time.Second, "how often")
	var b bytes.Buffer
	cliflag.PrintFlags(&b, fs)
	want := "  --auto\n    \tdo it\n    \ton two lines (default true)\n" +
		"  --dir string\n    \ta directory\n" +
		"  --listen API\n    \taddress of the API (default :8443)\n" +
		"  --quiet\n    \tsay less\n" +
		"  --tick duration\n    \thow often (default 10s)\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// TestBinariesHelpAndVersion builds the binaries and runs them as a user
// would: -h and --help exit 0 and show the flags, --version prints the
// version and exits 0, a bad flag exits 2 (and tether's exit codes reach
// the process).
func TestBinariesHelpAndVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds six binaries")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/tether", "./cmd/ca", "./cmd/discovery", "./cmd/injector", "./cmd/sidecar", "./cmd/cni-node")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(bin string, args ...string) (string, string, int) {
		var o, e bytes.Buffer
		cmd := exec.Command(filepath.Join(dir, bin), args...)
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			return o.String(), e.String(), exit.ExitCode()
		case err != nil:
			t.Fatalf("%s %q: %v", bin, args, err)
		}
		return o.String(), e.String(), 0
	}
	for _, tc := range []struct {
		bin  string
		args []string
		flag string // a flag its help lists
	}{
		{"ca", nil, "-store-dir"},
		{"discovery", nil, "-mesh"},
		{"injector", nil, "-tls-cert-file"},
		{"sidecar", nil, "-workload-socket"},
		{"sidecar", []string{"init"}, "-proxy-uid"},
		{"cni-node", nil, "-cni-conf-dir"},
	} {
		for _, help := range []string{"-h", "--help"} {
			out, errOut, code := run(tc.bin, append(tc.args, help)...)
			if code != 0 || !strings.Contains(out+errOut, tc.flag) || !strings.Contains(out+errOut, "-version") && len(tc.args) == 0 {
				t.Errorf("%s %q %s: exit %d, help without %s or -version:\n%s%s", tc.bin, tc.args, help, code, tc.flag, out, errOut)
			}
		}
		out, errOut, code := run(tc.bin, append(tc.args, "--version")...)
		// The binaries carry the VCS revision when built in a checkout; this
		// test binary never does (go test does not stamp it).
		if code != 0 || !versionLine.MatchString(out) || errOut != "" {
			t.Errorf("%s %q --version: exit %d, stdout %q, stderr %q", tc.bin, tc.args, code, out, errOut)
		}
		if _, errOut, code := run(tc.bin, append(tc.args, "--no-such-flag")...); code != 2 || !strings.Contains(errOut, "no-such-flag") {
			t.Errorf("%s %q --no-such-flag: exit %d, stderr %q; want 2", tc.bin, tc.args, code, errOut)
		}
	}

	// tether: the process exits with Main's status.
	if out, _, code := run("tether", "ca", "--help"); code != 0 || !strings.Contains(out, "tether ca [command]") {
		t.Errorf("tether ca --help: exit %d\n%s", code, out)
	}
	if _, errOut, code := run("tether", "ca", "status", "--bogus"); code != 2 || errOut != "tether: unknown flag: --bogus\nRun 'tether ca status --help' for usage.\n" {
		t.Errorf("tether ca status --bogus: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := run("tether", "ca", "status", "--socket", filepath.Join(dir, "none.sock")); code != 1 || !strings.HasPrefix(errOut, "tether: CA operator socket") {
		t.Errorf("tether ca status without a CA: exit %d, stderr %q", code, errOut)
	}
	if out, _, code := run("tether", "version", "--client"); code != 0 || !clientLine.MatchString(out) {
		t.Errorf("tether version --client: exit %d, %q", code, out)
	}
}

// versionLine is what --version prints: the version, with the revision as
// build metadata when the build recorded one; clientLine is `tether
// version --client`'s line.
var (
	versionLine = regexp.MustCompile(`^` + regexp.QuoteMeta(version.Version) + `(\+[0-9a-f]{12}(-dirty)?)?\n$`)
	clientLine  = regexp.MustCompile(`^Client: ` + regexp.QuoteMeta(version.Version) + `( \(revision [0-9a-f]{12}(-dirty)?\))?\n$`)
)
