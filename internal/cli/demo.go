package cli

import (
	"github.com/spf13/cobra"

	"github.com/tether-mesh/tether/internal/demo"
)

// newDemoCmd is `tether demo`, run by package demo, which parses its own
// flags.
func (a *App) newDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the whole mesh on this machine, on loopback, without root, and tell what happens",
		Long:  "Runs tether-ca, tether-discovery and three sample services behind their sidecars on loopback, with traffic. Run tether demo --help for its flags.",
		Example: `  tether demo
  tether demo --rotate --duration 2m`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return (&demo.Command{Stdout: a.Stdout, Stderr: a.Stderr, Tether: a.run}).Run(cmd.Context(), args)
		},
	}
}
