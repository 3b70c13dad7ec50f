package cli_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tether-mesh/tether/internal/cli"
)

// commands is every command of the tree, depth first, with its words
// after "tether" (none for the root).
func commands(t *testing.T) map[string]*cobra.Command {
	t.Helper()
	all := make(map[string]*cobra.Command)
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		all[strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), "tether"), " ")] = c
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk((&cli.App{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}).Tree())
	// The tree must hold what the tests below are about: a change that
	// drops commands must fail here, not pass with fewer cases.
	for _, want := range []string{"", "identity", "svid fetch", "ca token create", "ca token list", "ca revoke", "ca unrevoke",
		"ca status", "ca rotate prepare", "ca rotate activate", "ca rotate retire", "ca rotate renew-intermediate",
		"ca offline-root init", "ca offline-root sign-intermediate", "policy check", "policy graph", "status",
		"demo", "demo app", "completion"} {
		if all[want] == nil {
			t.Fatalf("no command %q in the tree", "tether "+want)
		}
	}
	return all
}

// words is the command line of the command at path with more words.
func words(path string, more ...string) []string {
	return append(strings.Fields(path), more...)
}

// usageErr is what every usage error prints: two lines.
func usageErr(path, msg string) string {
	return "tether: " + msg + "\nRun '" + strings.TrimSpace("tether "+path) + " --help' for usage.\n"
}

// TestEveryCommandHelp: --help of every command exits 0 and shows its
// description and an example on stdout, and says nothing on stderr.
func TestEveryCommandHelp(t *testing.T) {
	for path, c := range commands(t) {
		t.Run("tether "+path, func(t *testing.T) {
			if c.Short == "" || c.Long == "" || c.Example == "" {
				t.Errorf("Short %q, Long %q, Example %q: each command needs all three", c.Short, c.Long, c.Example)
			}
			for _, help := range [][]string{words(path, "--help"), words(path, "-h"), words("help " + path)} {
				out, errOut, code := run(t, help...)
				if code != 0 || errOut != "" {
					t.Errorf("%q: exit %d, stderr %q; want 0 and nothing", help, code, errOut)
				}
				firstExample := strings.SplitN(c.Example, "\n", 2)[0]
				for _, want := range []string{strings.SplitN(c.Long, "\n", 2)[0], "Usage:\n", "Examples:\n" + firstExample, "  -h, --help"} {
					if !strings.Contains(out, want) {
						t.Errorf("%q does not show %q:\n%s", help, want, out)
					}
				}
			}
		})
	}
}

// TestEveryCommandUnknownFlag: an unknown flag is a usage error in two
// lines that name the command.
func TestEveryCommandUnknownFlag(t *testing.T) {
	for path := range commands(t) {
		t.Run("tether "+path, func(t *testing.T) {
			out, errOut, code := run(t, words(path, "--no-such-flag")...)
			if want := usageErr(path, "unknown flag: --no-such-flag"); code != 2 || errOut != want || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2, nothing and %q", code, out, errOut, want)
			}
		})
	}
}

// TestEveryCommandRequiredFlags: for every required flag, leaving it out
// (with the others given) is a usage error that names it.
func TestEveryCommandRequiredFlags(t *testing.T) {
	n := 0
	for path, c := range commands(t) {
		var required []*pflag.Flag
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if slices.Equal(f.Annotations[cobra.BashCompOneRequiredFlag], []string{"true"}) {
				required = append(required, f)
			}
		})
		for _, missing := range required {
			n++
			t.Run("tether "+path+" without --"+missing.Name, func(t *testing.T) {
				args := words(path)
				for _, f := range required {
					if f != missing {
						args = append(args, "--"+f.Name, "x")
					}
				}
				out, errOut, code := run(t, args...)
				if want := usageErr(path, `required flag(s) "`+missing.Name+`" not set`); code != 2 || errOut != want || out != "" {
					t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2, nothing and %q", args, code, out, errOut, want)
				}
				if !strings.HasSuffix(missing.Usage, "(required)") {
					t.Errorf("the help of --%s does not say it is required: %q", missing.Name, missing.Usage)
				}
			})
		}
	}
	if n < 8 {
		t.Errorf("only %d required flags in the tree; the commands lost their required flags", n)
	}
}

// TestEveryCommandFlagSpelling: flags are --long; only the conventional
// one-letter shorthands exist.
func TestEveryCommandFlagSpelling(t *testing.T) {
	conventional := map[string]string{"o": "output", "n": "namespace", "f": "filename", "h": "help"}
	for path, c := range commands(t) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Shorthand != "" && conventional[f.Shorthand] != f.Name && !(f.Shorthand == "f" && f.Name == "values") {
				t.Errorf("tether %s: -%s for --%s is not a conventional shorthand", path, f.Shorthand, f.Name)
			}
		})
	}
}

// TestUsageErrors: the other kinds of bad command lines, each in two lines
// naming the command the user typed, never the top-level usage.
func TestUsageErrors(t *testing.T) {
	// The top-level commands, as the errors list them (not hidden, sorted).
	var names []string
	for _, c := range (&cli.App{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}).Tree().Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" {
			names = append(names, c.Name())
		}
	}
	slices.Sort(names)
	top := strings.Join(names, ", ")
	for _, want := range []string{"ca", "check", "completion", "identity", "policy", "status", "svid", "version"} {
		if !slices.Contains(names, want) {
			t.Errorf("tether has no command %q (commands: %s)", want, top)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, usageErr("", "tether needs a command: "+top)},
		{[]string{"frobnicate"}, usageErr("", `unknown command "frobnicate" for "tether" (its commands: `+top+`)`)},
		{[]string{"polcy"}, usageErr("", `unknown command "polcy" for "tether" (did you mean "policy"?)`)},
		{[]string{"ca", "rotte"}, usageErr("ca", `unknown command "rotte" for "tether ca" (did you mean "rotate"?)`)},
		{[]string{"ca", "rotate", "sideways", "--force"}, usageErr("ca rotate", `unknown command "sideways" for "tether ca rotate" (its commands: activate, prepare, renew-intermediate, retire)`)},
		{[]string{"ca", "token"}, usageErr("ca token", "tether ca token needs a command: create, list")},
		{[]string{"help", "nothing"}, usageErr("help", `unknown help topic "nothing" (tether's commands: `+top+`)`)},
		{[]string{"help", "ca", "nothing"}, usageErr("help", `unknown help topic "nothing" (tether's commands: `+top+`)`)},
		{[]string{"ca", "status", "extra"}, usageErr("ca status", `tether ca status takes no arguments, got ["extra"]`)},
		{[]string{"ca", "token", "create", "--spiffe-id", "spiffe://x/y", "--ttl", "soon"}, usageErr("ca token create",
			`invalid argument "soon" for "--ttl" flag: time: invalid duration "soon"`)},
		{[]string{"policy", "graph", "-o", "xml"}, usageErr("policy graph",
			`invalid argument "xml" for "-o, --output" flag: unknown output format "xml": want text, json, yaml, dot`)},
		{[]string{"policy", "check", "-o", "dot", "--from", "a/b", "--to", "a/c"}, usageErr("policy check",
			`invalid argument "dot" for "-o, --output" flag: unknown output format "dot": want text, json, yaml`)},
		{[]string{"policy", "graph", "--dot", "-o", "json", "--mesh", "x"}, usageErr("policy graph", "--dot and -o json: give one (--dot is -o dot)")},
		{[]string{"identity", "--json=maybe"}, usageErr("identity", `invalid argument "maybe" for "--json" flag: --json takes no value (use -o json)`)},
		{[]string{"completion"}, usageErr("completion", "completion takes one argument, the shell: bash, zsh, fish or powershell")},
		{[]string{"completion", "tcsh"}, usageErr("completion", `completion: unknown shell "tcsh": want bash, zsh, fish or powershell`)},
		{[]string{"status", "--discovery-admin", "ftp://x"}, usageErr("status",
			`invalid argument "ftp://x" for "--discovery-admin" flag: want an http URL such as http://127.0.0.1:15014, got "ftp://x"`)},
	} {
		out, errOut, code := run(t, tc.args...)
		if code != 2 || errOut != tc.want || out != "" {
			t.Errorf("tether %q: exit %d, stdout %q, stderr %q; want 2, nothing and %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestRuntimeFailures: a command that cannot do its work exits 1 with one
// line that says why.
func TestRuntimeFailures(t *testing.T) {
	dir := t.TempDir()
	nosock := filepath.Join(dir, "none.sock")
	mesh := meshFile(t, testMesh)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "status", "--socket", nosock}, "tether: CA operator socket " + nosock + ": stat "},
		{[]string{"ca", "token", "list", "--socket", nosock, "-o", "json"}, "tether: CA operator socket " + nosock + ": stat "},
		{[]string{"ca", "rotate", "prepare", "--socket", nosock}, "tether: CA operator socket " + nosock + ": stat "},
		{[]string{"ca", "offline-root", "sign-intermediate", "--dir", dir, "--out", filepath.Join(dir, "out")}, "tether: invalid CA configuration: open " + filepath.Join(dir, "root.pem")},
		{[]string{"svid", "fetch", "--ca", "127.0.0.1:1", "--bundle", filepath.Join(dir, "none.pem"), "--out", dir, "--token", "t"}, "tether: read bundle"},
		{[]string{"policy", "check", "--mesh", mesh, "--from", "default/api", "--to", "default/api:8080", "-o", "yaml"}, "tether: denied: default/api may not reach default/api on 1 of 1 port(s)"},
		{[]string{"policy", "graph", "--mesh", filepath.Join(dir, "none.yaml")}, "tether: open " + filepath.Join(dir, "none.yaml")},
		{[]string{"identity", "--socket", nosock}, "tether: no Workload API socket at " + nosock},
		{[]string{"status", "--ca-socket", nosock, "-o", "json"}, "tether: part of the mesh could not be checked: 1 problem(s)"},
	} {
		_, errOut, code := run(t, tc.args...)
		lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
		last := lines[len(lines)-1]
		if code != 1 || !strings.HasPrefix(last, tc.want) || strings.Contains(errOut, "--help' for usage") {
			t.Errorf("tether %q: exit %d, stderr %q; want 1 and a last line starting %q", tc.args, code, errOut, tc.want)
		}
	}
}

// TestHelpOfGroups: the help the issue found missing.
func TestHelpOfGroups(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"ca", "--help"}, []string{"tether ca [command]", "token ", "revoke ", "unrevoke ", "status ", "rotate ", "offline-root "}},
		{[]string{"ca", "rotate", "--help"}, []string{"tether ca rotate [command]", "  activate ", "  prepare ", "  renew-intermediate ", "  retire "}},
		{[]string{"ca", "token", "--help"}, []string{"  create ", "  list "}},
		{[]string{"policy", "--help"}, []string{"  check ", "  graph "}},
		{[]string{"svid", "--help"}, []string{"  fetch "}},
		{[]string{"ca", "rotate", "activate", "--help"}, []string{"tether ca rotate activate [flags]", "--force", "--socket string"}},
	} {
		out, errOut, code := run(t, tc.args...)
		for _, w := range tc.want {
			if code != 0 || errOut != "" || !strings.Contains(out, w) {
				t.Errorf("tether %q: exit %d, stderr %q, stdout does not show %q:\n%s", tc.args, code, errOut, w, out)
			}
		}
	}
	byFlag, _, _ := run(t, "ca", "rotate", "--help")
	byCommand, _, _ := run(t, "help", "ca", "rotate")
	if byFlag != byCommand {
		t.Errorf("tether help ca rotate differs from tether ca rotate --help:\n%s\n---\n%s", byCommand, byFlag)
	}
}

// TestCompletion: the scripts are produced (bash's is valid bash), and
// the hidden __complete that they call completes command names.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		out, errOut, code := run(t, "completion", shell)
		if code != 0 || errOut != "" || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d, stderr %q, script without __complete (%d bytes)", shell, code, errOut, len(out))
		}
		if shell != "bash" {
			continue
		}
		bash, err := exec.LookPath("bash")
		if err != nil {
			t.Log("bash not installed: the script's syntax is not checked")
			continue
		}
		script := filepath.Join(t.TempDir(), "tether.bash")
		if err := os.WriteFile(script, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("bash -n rejects the completion script: %v\n%s", err, b)
		}
		// Loaded into a shell, the script registers its function.
		if b, err := exec.Command(bash, "-c", "source "+script+" && complete -p tether").CombinedOutput(); err != nil || !strings.Contains(string(b), "__start_tether") {
			t.Errorf("sourcing the script does not register completion for tether: %v\n%s", err, b)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "ca", "ro"}, []string{"rotate\t", ":4\n"}},
		{[]string{"__complete", "ca", "rotate", ""}, []string{"activate\t", "prepare\t", "renew-intermediate\t", "retire\t"}},
		{[]string{"__complete", "policy", "graph", "-o", ""}, []string{"text\n", "json\n", "yaml\n", "dot\n"}},
		{[]string{"__complete", "help", "c"}, []string{"ca\n", "completion\n"}},
	} {
		out, _, code := run(t, tc.args...)
		for _, w := range tc.want {
			if code != 0 || !strings.Contains(out, w) {
				t.Errorf("tether %q: exit %d, completions do not hold %q:\n%s", tc.args, code, w, out)
			}
		}
	}
}

// TestOutputFormats: -o yaml has the fields of -o json; the deprecated
// --json still prints JSON on stdout and says so on stderr.
func TestOutputFormats(t *testing.T) {
	mesh := meshFile(t, testMesh)
	check := []string{"policy", "check", "--mesh", mesh, "--from", "default/web", "--to", "default/api:8080"}
	asJSON, _, code := run(t, append(check, "-o", "json")...)
	if code != 0 || !strings.HasPrefix(asJSON, "{\n  \"source\": \"spiffe://cluster.local/ns/default/sa/web\",") {
		t.Fatalf("-o json: exit %d, %q", code, asJSON)
	}
	legacy, errOut, code := run(t, append(check, "--json")...)
	if code != 0 || legacy != asJSON || errOut != "tether: --json is deprecated: use -o json\n" {
		t.Errorf("--json: exit %d, stdout %q (want the -o json output), stderr %q", code, legacy, errOut)
	}
	asYAML, _, code := run(t, append(check, "-o", "yaml")...)
	want := `allowed: true
destination: default/api
ports:
- allowed: true
  port: 8080
  port_name: http
  rule: AccessPolicy default/api-from-web
source: spiffe://cluster.local/ns/default/sa/web
`
	if code != 0 || asYAML != want {
		t.Errorf("-o yaml: exit %d\n%s\nwant\n%s", code, asYAML, want)
	}
	text, _, _ := run(t, append(check, "-o", "text")...)
	if byDefault, _, _ := run(t, check...); text != byDefault || !strings.HasPrefix(text, "allowed default/web -> default/api:8080") {
		t.Errorf("-o text %q differs from the default %q", text, byDefault)
	}

	graph, _, code := run(t, "policy", "graph", "--mesh", mesh, "-o", "yaml")
	for _, w := range []string{"- destination: default/api\n  ports:\n  - 8080\n  rule: AccessPolicy default/api-from-web\n  source: spiffe://cluster.local/ns/default/sa/web\n"} {
		if code != 0 || !strings.Contains(graph, w) {
			t.Errorf("policy graph -o yaml: exit %d, does not hold %q:\n%s", code, w, graph)
		}
	}
	dot, _, _ := run(t, "policy", "graph", "--mesh", mesh, "--dot")
	if odot, _, _ := run(t, "policy", "graph", "--mesh", mesh, "-o", "dot"); dot != odot || !strings.HasPrefix(dot, "digraph mesh {") {
		t.Errorf("--dot and -o dot differ or are not a digraph:\n%s\n---\n%s", dot, odot)
	}
}
