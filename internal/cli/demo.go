package cli

import (
	"github.com/spf13/cobra"

	"github.com/tether-mesh/tether/internal/demo"
)

// newDemoCmd is `tether demo`, run by package demo, with its hidden `app`
// subcommand (the sample service the demo runs behind each sidecar).
func (a *App) newDemoCmd() *cobra.Command {
	d := &demo.Command{Stdout: a.Stdout, Stderr: a.Stderr, Tether: a.run}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole mesh on this machine, on loopback, without root, and tell what happens",
		Long:  demo.Help,
		Example: `  # Build the binaries, then run the demo until Ctrl-C
  make build && bin/tether demo

  # A root rotation under traffic, then stop
  bin/tether demo --rotate --duration 2m

  # Two meshes (a.example, b.example) trusting each other by SPIFFE bundle
  bin/tether demo --federation --duration 30s

  # Any free ports, and keep the state and logs
  bin/tether demo --ports 0 --dir ./demo-state`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return d.Run(cmd.Context())
		},
	}
	d.AddFlags(cmd.Flags())
	_ = cmd.MarkFlagDirname("dir")
	_ = cmd.MarkFlagDirname("bin")
	cmd.AddCommand(a.newDemoAppCmd())
	return cmd
}

// newDemoAppCmd is the hidden `tether demo app`.
func (a *App) newDemoAppCmd() *cobra.Command {
	app := &demo.App{Stderr: a.Stderr}
	cmd := &cobra.Command{
		Use:     "app",
		Short:   "A sample service of tether demo (run by the demo)",
		Long:    demo.AppHelp,
		Example: `  tether demo app --name api --listen 127.0.0.1:18020 --call db=127.0.0.1:18023`,
		Hidden:  true,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return app.Run(cmd.Context())
		},
	}
	app.AddFlags(cmd.Flags())
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}
