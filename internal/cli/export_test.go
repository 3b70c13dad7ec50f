package cli

import "github.com/spf13/cobra"

// Tree is the command tree Main runs, for the tests that walk it.
func (a *App) Tree() *cobra.Command {
	root, _ := a.newRoot()
	return root
}
