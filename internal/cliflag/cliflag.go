// Package cliflag holds what the command lines of Tether's binaries share:
// the usage error of the packages behind the tether command line, and the
// --version of the component binaries.
//
// A package that implements a tether command (internal/demo, for
// instance) wraps ErrUsage in errors about bad input that flag parsing
// cannot catch; the CLI prints such an error with the command's usage hint
// and exits with status 2.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tether-mesh/tether/internal/version"
)

// ErrUsage marks errors about the command line: the CLI exits 2 on them.
// Wrap it as fmt.Errorf("%w: --rate %g: want ...", ErrUsage, rate); the
// CLI prints the message without its "usage: " prefix.
var ErrUsage = errors.New("usage")

// VersionUsage documents --version in the help of a component binary
// whose flag set does not list it.
const VersionUsage = "  --version\n    \tprint the version and exit\n"

// PrintVersion answers --version for a component binary (tether-ca,
// tether-discovery, tether-injector, tether-sidecar), whose flags are Go's
// flag package's: if args hold -version or --version before the first
// "--", it prints version.String() on stdout and reports true, and the
// binary exits 0 without parsing its other flags.
func PrintVersion(args []string, stdout io.Writer) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-version", "--version", "-version=true", "--version=true":
			fmt.Fprintln(stdout, version.String())
			return true
		}
	}
	return false
}

// PrintFlags writes the flags of fs as flag.PrintDefaults does, but spelled
// --flag, as the documentation and the tether command spell them (Go's
// flag package accepts both).
func PrintFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + name
		}
		usage = strings.ReplaceAll(usage, "\n", "\n    \t")
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			if name == "string" {
				usage += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				usage += " (default " + f.DefValue + ")"
			}
		}
		fmt.Fprintf(w, "%s\n    \t%s\n", line, usage)
	})
}
