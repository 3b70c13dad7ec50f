// Package cliflag holds what the packages behind the tether command line
// share with it: the usage error. A package that implements a command
// (internal/demo, for instance) wraps ErrUsage in errors about bad input
// that flag parsing cannot catch; the CLI prints such an error with the
// command's usage hint and exits with status 2.
package cliflag

import "errors"

// ErrUsage marks errors about the command line: the CLI exits 2 on them.
// Wrap it as fmt.Errorf("%w: --rate %g: want ...", ErrUsage, rate); the
// CLI prints the message without its "usage: " prefix.
var ErrUsage = errors.New("usage")
