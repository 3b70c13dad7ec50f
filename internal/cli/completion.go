package cli

import (
	"github.com/spf13/cobra"
)

// newCompletionCmd is `tether completion SHELL`: cobra's completion
// scripts, with how to install each.
func (a *App) newCompletionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print the shell completion script for bash, zsh, fish or PowerShell",
		Long: `Prints a script that makes the shell complete tether's commands, flags
and flag values. Load it in the current shell, or install it for every new
one:

  bash (needs the bash-completion package):
    source <(tether completion bash)
    tether completion bash > /etc/bash_completion.d/tether

  zsh:
    source <(tether completion zsh)
    tether completion zsh > "${fpath[1]}/_tether"     # then start a new shell

  fish:
    tether completion fish | source
    tether completion fish > ~/.config/fish/completions/tether.fish

  PowerShell:
    tether completion powershell | Out-String | Invoke-Expression`,
		Example: `  source <(tether completion bash)
  tether completion zsh > "${fpath[1]}/_tether"`,
		ValidArgs: []string{"bash", "zsh", "fish", "powershell"},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("completion takes one argument, the shell: bash, zsh, fish or powershell")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.Stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.Stdout)
			case "fish":
				return root.GenFishCompletion(a.Stdout, true)
			case "powershell":
				return root.GenPowerShellCompletionWithDesc(a.Stdout)
			}
			return usagef("completion: unknown shell %q: want bash, zsh, fish or powershell", args[0])
		},
	}
	return cmd
}
