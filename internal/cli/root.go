// Package cli is the `tether` command line: identities for developers,
// CA operations, policy questions and mesh status for operators. It is
// built on spf13/cobra, and follows the conventions of kubectl, linkerd
// and istioctl: help with examples for every command, --flag spelling,
// -o json|yaml where the output is data, and exit status 0 (success),
// 1 (failure) or 2 (usage error).
//
// # Adding a command
//
// Put each command in its own file, internal/cli/<command>.go, with a
// constructor method on App that returns the cobra command, registered
// from that file's init function under its parent's path ("" is the root):
//
//	func init() { register("ca rotate", (*App).newCARotateStatusCmd) }
//
//	// newCARotateStatusCmd is `tether ca rotate status`.
//	func (a *App) newCARotateStatusCmd() *cobra.Command {
//		var out Output
//		cmd := &cobra.Command{
//			Use:     "status",
//			Short:   "One line, lower case, no period",
//			Long:    "Paragraphs: what it does, what it needs, its exit status.",
//			Example: "  tether ca rotate status -o json",
//			Args:    noArgs,
//			RunE: func(cmd *cobra.Command, _ []string) error {
//				data, err := ...(cmd.Context())
//				if err != nil {
//					return err // runtime failure: exit 1
//				}
//				return out.Print(a.Stdout, data, func(w io.Writer) error { ... human text ... })
//			},
//		}
//		out.AddFlag(cmd) // -o/--output text|json|yaml
//		return cmd
//	}
//
// Rules: Short, Long and Example are required (a test walks the tree).
// Write output to a.Stdout and notes to a.Stderr (never os.Stdout), and
// take the context from cmd.Context(). Declare required flags with
// cmd.MarkFlagRequired. Errors: cobra's own (unknown command or flag,
// bad flag value, missing required flag, wrong arguments) are usage
// errors; inside RunE return usagef(...) for bad input that flag parsing
// could not catch (exit 2, with "Run 'tether ... --help' for usage."),
// any other error for a failure (exit 1). Main prints the error once, as
// "tether: <error>"; never print it yourself. A command that must exit
// 1 after printing its answer (a denied check) returns an error that says
// why, like errDenied.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tether-mesh/tether/internal/cliflag"
)

// App is the CLI with its outputs.
type App struct {
	// Stdin is read by the flags that take "-" (nil: os.Stdin).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exit statuses of the tether command.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// usageError is bad input: Main prints it with the command's usage hint
// and exits 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error (exit status 2) formatted as fmt.Errorf.
func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// isUsage reports whether err is a usage error: one made by usagef, or
// one of the packages that still wrap cliflag.ErrUsage.
func isUsage(err error) bool {
	var u *usageError
	return errors.As(err, &u) || errors.Is(err, cliflag.ErrUsage)
}

// registration is a command added by its own file's init function.
type registration struct {
	parent string
	newCmd func(*App) *cobra.Command
}

var registered []registration

// register adds the command newCmd makes under the command at path
// parent (space-separated names below the root; "" for the root). Call
// it from the init function of the command's file.
func register(parent string, newCmd func(*App) *cobra.Command) {
	registered = append(registered, registration{parent, newCmd})
}

// Main runs the CLI and returns the process exit code.
func (a *App) Main(ctx context.Context, args []string) int {
	root, started := a.newRoot()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if cmd == nil {
		cmd = root
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case !*started || isUsage(err):
		// Everything that fails before a command runs is cobra's
		// parsing: an unknown command or flag, a bad value, a missing
		// required flag, wrong arguments.
		fmt.Fprintf(a.Stderr, "tether: %s\n", usageMessage(err))
		fmt.Fprintf(a.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return ExitUsage
	default:
		fmt.Fprintf(a.Stderr, "tether: %v\n", err)
		return ExitFailure
	}
}

// usageMessage is err's message without the "usage: " of
// cliflag.ErrUsage.
func usageMessage(err error) string {
	return strings.TrimPrefix(err.Error(), cliflag.ErrUsage.Error()+": ")
}

// run runs another command with its own outputs (tether demo shows what
// some commands say). It returns what the command returned.
func (a *App) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := &App{Stdin: a.Stdin, Stdout: stdout, Stderr: stderr}
	root, _ := sub.newRoot()
	root.SetArgs(args)
	_, err := root.ExecuteContextC(ctx)
	return err
}

// newRoot builds the command tree. *started becomes true when a
// command's RunE is entered: errors before that are usage errors.
func (a *App) newRoot() (*cobra.Command, *bool) {
	if a.Stdin == nil {
		a.Stdin = os.Stdin
	}
	root := &cobra.Command{
		Use:   "tether",
		Short: "The Tether service mesh command line",
		Long: `tether is the command line of the Tether service mesh: identities for
developers (tether identity, tether svid fetch), the CA's operations
(tether ca), policy questions (tether policy), the state of a running mesh
(tether status), and a demo of the whole mesh on this machine (tether demo).

Exit status: 0 success, 1 failure (the command says why on stderr),
2 usage error (an unknown command or flag, a bad or missing flag value).`,
		Example: `  # What is my workload's identity?
  tether identity

  # The state of the mesh in the current kubectl context
  tether status

  # May the frontend reach the API?
  tether policy check --from web/frontend --to shop/api:80

  # Run the whole mesh on this machine
  tether demo`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Completions of flags named like files are the shell's.
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
	}
	root.SetIn(a.Stdin)
	root.SetOut(a.Stdout)
	root.SetErr(a.Stderr)
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(flagError)
	root.SetHelpCommand(a.newHelpCmd())
	for _, c := range []*cobra.Command{
		a.newIdentityCmd(), a.newSVIDCmd(), a.newCACmd(), a.newPolicyCmd(),
		a.newStatusCmd(), a.newVersionCmd(), a.newDemoCmd(), a.newCompletionCmd(),
	} {
		root.AddCommand(c)
	}
	for _, r := range registered {
		parent := root
		if r.parent != "" {
			p, rest, err := root.Find(strings.Fields(r.parent))
			if err != nil || len(rest) > 0 {
				panic(fmt.Sprintf("cli: register under %q: no such command", r.parent))
			}
			parent = p
		}
		parent.AddCommand(r.newCmd(a))
	}
	started := new(bool)
	markGroups(root, started)
	return root, started
}

// markGroups walks the tree: every command with subcommands gets the
// group behaviour (an unknown subcommand or none is a usage error), every
// RunE sets *started when it is entered, and the help of required flags
// says so.
func markGroups(c *cobra.Command, started *bool) {
	if c.HasSubCommands() && c.RunE == nil && c.Run == nil {
		c.Args = groupArgs
		c.RunE = func(cmd *cobra.Command, _ []string) error {
			return usagef("%s needs a command: %s", cmd.CommandPath(), strings.Join(subcommandNames(cmd), ", "))
		}
	} else if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*started = true
			return run(cmd, args)
		}
	}
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if req := f.Annotations[cobra.BashCompOneRequiredFlag]; len(req) > 0 && req[0] == "true" && !strings.HasSuffix(f.Usage, "(required)") {
			f.Usage += " (required)"
		}
	})
	for _, sub := range c.Commands() {
		markGroups(sub, started)
	}
}

// groupArgs rejects the arguments of a command group: the first is a
// mistyped or unknown subcommand.
func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", strings.Join(s, `" or "`))
	} else {
		msg += fmt.Sprintf(" (its commands: %s)", strings.Join(subcommandNames(cmd), ", "))
	}
	return usagef("%s", msg)
}

// flagError is the error of a flag cmd does not accept, or of a bad flag
// value. In a group, the mistyped command that came before the flag is
// the error: `tether ca rotate sideways --force`.
func flagError(cmd *cobra.Command, err error) error {
	if cmd.HasAvailableSubCommands() {
		if args := cmd.Flags().Args(); len(args) > 0 {
			return groupArgs(cmd, args)
		}
	}
	return &usageError{err}
}

// subcommandNames lists cmd's visible subcommands.
func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	slices.Sort(names)
	return names
}

// noArgs is the Args of commands that take no positional arguments.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// newHelpCmd is `tether help [COMMAND...]`: cobra's, except that an
// unknown topic is a usage error instead of the top-level usage.
func (a *App) newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND...]",
		Short: "Help about any command",
		Long:  "Help shows the help of a command: what it does, its flags and examples.",
		Example: `  tether help ca
  tether help ca rotate`,
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := cmd.Root().Find(args)
			if err != nil || len(rest) > 0 {
				unknown := strings.Join(args, " ")
				if target != nil && len(rest) > 0 {
					unknown = rest[0]
				}
				return usagef("unknown help topic %q (tether's commands: %s)", unknown, strings.Join(subcommandNames(cmd.Root()), ", "))
			}
			target.InitDefaultHelpFlag() // as when it runs with --help
			return target.Help()
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := cmd.Root().Find(args)
			if err != nil || target == nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return subcommandNames(target), cobra.ShellCompDirectiveNoFileComp
		},
	}
}

// usageTemplate is cobra's, except that a group's usage line is only
// "COMMAND [command]" (groups run only to report a missing command).
const usageTemplate = `Usage:{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{else if .Runnable}}
  {{.UseLine}}{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}

Available Commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`
