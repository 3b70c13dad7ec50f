package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Output formats of -o/--output.
const (
	// FormatText is the default: text for people, which may change
	// between releases.
	FormatText = "text"
	// FormatJSON and FormatYAML are for scripts; their fields are stable
	// (the JSON tags of the printed value; YAML has the same names).
	FormatJSON = "json"
	FormatYAML = "yaml"
)

// Output is the -o/--output flag of a command whose output is data. The
// zero value is FormatText; AddFlag registers it.
type Output struct {
	format string
	// extra are formats of one command beyond text, json and yaml (the
	// dot of `policy graph`).
	extra []string
}

// AddFlag registers -o/--output on cmd, accepting text, json, yaml and
// extra. Unknown formats are usage errors.
func (o *Output) AddFlag(cmd *cobra.Command, extra ...string) {
	o.extra = extra
	cmd.Flags().VarP((*outputValue)(o), "output", "o", "output format: "+strings.Join(o.formats(), ", "))
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return o.formats(), cobra.ShellCompDirectiveNoFileComp
	})
}

// AddJSONAlias registers --json, the spelling before -o existed, as a
// hidden, deprecated alias of -o json that tells on stderr to use -o json.
// (cobra's MarkDeprecated prints its notice on the command's output,
// stdout here, which would spoil the JSON the flag asks for.)
func (o *Output) AddJSONAlias(cmd *cobra.Command) {
	f := cmd.Flags().VarPF(&jsonAlias{o: o, stderr: cmd.ErrOrStderr}, "json", "", "deprecated: use -o json")
	f.NoOptDefVal = "true"
	f.Hidden = true
}

// Format is the chosen format: FormatText unless the flag says otherwise.
func (o *Output) Format() string {
	if o.format == "" {
		return FormatText
	}
	return o.format
}

// Print writes v as the chosen format: JSON (indented) or YAML of v, or,
// for text (and the command's extra formats), what text writes.
func (o *Output) Print(w io.Writer, v any, text func(io.Writer) error) error {
	switch o.Format() {
	case FormatJSON:
		return writeJSON(w, v)
	case FormatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding YAML: %w", err)
		}
		_, err = w.Write(b)
		return err
	default:
		return text(w)
	}
}

func (o *Output) formats() []string {
	return append([]string{FormatText, FormatJSON, FormatYAML}, o.extra...)
}

// outputValue is Output as a pflag.Value.
type outputValue Output

func (v *outputValue) String() string { return (*Output)(v).Format() }
func (v *outputValue) Type() string   { return "format" }

func (v *outputValue) Set(s string) error {
	o := (*Output)(v)
	if !slices.Contains(o.formats(), s) {
		return fmt.Errorf("unknown output format %q: want %s", s, strings.Join(o.formats(), ", "))
	}
	o.format = s
	return nil
}

// jsonAlias is the deprecated --json.
type jsonAlias struct {
	o      *Output
	set    bool
	stderr func() io.Writer
}

func (j *jsonAlias) String() string { return fmt.Sprint(j.set) }
func (j *jsonAlias) Type() string   { return "bool" }

func (j *jsonAlias) Set(s string) error {
	switch s {
	case "true":
		j.set, j.o.format = true, FormatJSON
		fmt.Fprintln(j.stderr(), "tether: --json is deprecated: use -o json")
	case "false":
		j.set = false
	default:
		return fmt.Errorf("--json takes no value (use -o json)")
	}
	return nil
}

// IsBoolFlag lets pflag parse --json without a value.
func (j *jsonAlias) IsBoolFlag() bool { return true }

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
