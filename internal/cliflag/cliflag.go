// Package cliflag holds what the packages of the tether command line share:
// flag sets that report errors instead of exiting, and the usage error that
// makes the CLI print its usage and exit with status 2.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// ErrUsage marks errors that should print usage.
var ErrUsage = errors.New("usage")

// New returns the flag set of `tether NAME`, which reports errors (and
// prints help) to stderr instead of exiting.
func New(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tether "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// Parse parses args and checks that exactly positional arguments remain.
// A parse error or a wrong count is wrapped in ErrUsage; -h returns
// flag.ErrHelp.
func Parse(fs *flag.FlagSet, args []string, positional int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if fs.NArg() != positional {
		return fmt.Errorf("%w: %s takes %d argument(s), got %q", ErrUsage, fs.Name(), positional, fs.Args())
	}
	return nil
}
