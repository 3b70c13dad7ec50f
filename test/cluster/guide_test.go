package cluster_test

import (
	"bufio"
	"cmp"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// guideFile is the operator's guide whose command blocks the real-node
// test runs as they are written (stage "guide" of TestUserStory).
const guideFile = "../../docs/install.md"

// guideMarker precedes each block of commands the test runs:
// `<!-- guide: NAME -->` on its own line, then a ```sh fenced block.
const guideMarker = "<!-- guide: "

// guideBlocks reads the named command blocks of a guide: each line of a
// block is one shell command (comments and blank lines dropped).
func guideBlocks(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	blocks := map[string][]string{}
	sc := bufio.NewScanner(f)
	var name string // the block being read; "" outside
	var fenced bool
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		switch {
		case strings.HasPrefix(text, guideMarker):
			if name != "" {
				return nil, fmt.Errorf("%s:%d: a guide marker inside block %q", path, line, name)
			}
			name = strings.TrimSuffix(strings.TrimPrefix(text, guideMarker), " -->")
			if name == "" || strings.ContainsAny(name, " <>") {
				return nil, fmt.Errorf("%s:%d: malformed guide marker %q", path, line, text)
			}
			if _, dup := blocks[name]; dup {
				return nil, fmt.Errorf("%s:%d: guide block %q twice", path, line, name)
			}
			blocks[name] = nil
		case name != "" && !fenced:
			if text != "```sh" {
				return nil, fmt.Errorf("%s:%d: guide block %q: the marker must be followed by a ```sh line, not %q", path, line, name, text)
			}
			fenced = true
		case name != "" && text == "```":
			if len(blocks[name]) == 0 {
				return nil, fmt.Errorf("%s:%d: guide block %q has no command", path, line, name)
			}
			name, fenced = "", false
		case name != "":
			cmd := strings.TrimSpace(text)
			if cmd == "" || strings.HasPrefix(cmd, "#") {
				continue
			}
			blocks[name] = append(blocks[name], cmd)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if name != "" {
		return nil, fmt.Errorf("%s: guide block %q is not closed", path, name)
	}
	return blocks, nil
}

// TestGuide checks, without a node, that docs/install.md has the blocks
// the real-node stage runs and that they are the operator's path: check
// before, install CRDs then the rest, check after, mesh and check the
// data plane, uninstall.
func TestGuide(t *testing.T) {
	blocks, err := guideBlocks(guideFile)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"install":   {"tether check --pre", "tether install --crds", "tether install |", "tether check"},
		"mesh":      {"tether.dev/inject=enabled", "rollout restart", "tether check --proxy -n NS"},
		"uninstall": {"tether uninstall"},
	}
	for name, cmds := range want {
		text := strings.Join(blocks[name], "\n")
		last := -1
		for _, c := range cmds {
			i := strings.Index(text[last+1:], c)
			if i < 0 {
				t.Errorf("guide block %q lacks %q after position %d:\n%s", name, c, last, text)
				break
			}
			last += 1 + i
		}
	}
	if len(blocks) != len(want) {
		t.Errorf("guide blocks %v, want exactly %v (TestUserStory's stage guide runs those)", slices.Sorted(maps.Keys(blocks)), slices.Sorted(maps.Keys(want)))
	}
}

func TestGuideBlocksParse(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		p := dir + "/g.md"
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := guideBlocks(write("intro\n<!-- guide: a -->\n```sh\n# comment\ntether check --pre   # trailing\n\nkubectl get ns\n```\n"))
	if err != nil || len(got["a"]) != 2 || got["a"][0] != "tether check --pre   # trailing" {
		t.Errorf("a good guide: %q, %v", got, err)
	}
	for name, text := range map[string]string{
		"no fence":   "<!-- guide: a -->\n    tether check\n",
		"empty":      "<!-- guide: a -->\n```sh\n```\n",
		"unclosed":   "<!-- guide: a -->\n```sh\ntether check\n",
		"duplicate":  "<!-- guide: a -->\n```sh\nx\n```\n<!-- guide: a -->\n```sh\ny\n```\n",
		"no name":    "<!-- guide:  -->\n```sh\nx\n```\n",
		"nested":     "<!-- guide: a -->\n```sh\n<!-- guide: b -->\n```\n",
		"wrong lang": "<!-- guide: a -->\n```bash\nx\n```\n",
	} {
		if _, err := guideBlocks(write(text)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// guideNamespace is the NS of the guide's commands: a namespace running
// the sample apps before it is meshed, as an operator's would.
const guideNamespace = "guide"

// guide runs the command blocks of docs/install.md as written, in order,
// with NS replaced by a namespace running the sample apps, in the node's
// namespaces with `tether` (built from this tree) and kubectl on PATH and
// KUBECONFIG set: install, mesh, uninstall. After each block it checks
// what the block promises: a healthy control plane, every pod of NS with
// a sidecar, and no webhook configuration or tether-system left.
func (s *storyRun) guide(t *testing.T) {
	if os.Getenv("TETHER_STORY_SKIP_GUIDE") == "1" {
		t.Skip("TETHER_STORY_SKIP_GUIDE=1: the guide's commands are not run")
	}
	blocks, err := guideBlocks(guideFile)
	if err != nil {
		t.Fatal(err)
	}
	ns := guideNamespace
	s.n.must(t, time.Minute, "create", "namespace", ns)
	t.Cleanup(func() { s.n.kubectl(3*time.Minute, "delete", "namespace", ns, "--ignore-not-found", "--wait=false") })
	s.n.mustIn(t, time.Minute, template(t, "apps.yaml", "__NAMESPACE__", ns, "__MARKER__", s.marker), "apply", "-f", "-")
	for _, a := range apps {
		s.n.must(t, 6*time.Minute, "-n", ns, "rollout", "status", "deploy/"+a, "--timeout=5m")
	}
	run := func(block string) {
		t.Helper()
		if len(blocks[block]) == 0 {
			t.Fatalf("%s has no guide block %q", guideFile, block)
		}
		for _, cmd := range blocks[block] {
			cmd = nsWord.ReplaceAllString(cmd, ns)
			began := time.Now()
			out, err := s.n.shell(t, 8*time.Minute, cmd)
			if err != nil {
				t.Fatalf("docs/install.md (%s): %s: %v", block, cmd, err)
			}
			t.Logf("docs/install.md (%s): %s: ok in %s\n%s", block, cmd, time.Since(began).Round(100*time.Millisecond), tail(out, 3000))
		}
	}

	run("install")
	run("mesh")
	for _, a := range apps {
		for _, p := range s.n.pods(t, ns, "app="+a) {
			if p.DeletionTimestamp != nil {
				continue
			}
			if err := checkInjected(p, modeInit); err != nil {
				t.Errorf("after the guide's mesh block, pod %s/%s: %v", ns, p.Name, err)
			}
		}
	}
	run("uninstall")
	if out := s.n.must(t, time.Minute, "get", "mutatingwebhookconfigurations", "-o", "name"); strings.Contains(out, "tether") {
		t.Errorf("after the guide's uninstall a webhook configuration is left: %s", out)
	}
	if out, err := s.n.kubectl(time.Minute, "get", "namespace", "tether-system", "-o", "name"); err == nil {
		t.Errorf("after the guide's uninstall namespace tether-system is left: %s", out)
	}
}

// nsWord is the guide's placeholder for the operator's namespace.
var nsWord = regexp.MustCompile(`\bNS\b`)

// shell runs a command line with bash (pipefail) in the node's namespaces,
// with the tether CLI of this tree and the node's kubectl on PATH and
// KUBECONFIG set to the node's, as an operator's shell would have them.
func (n *node) shell(t *testing.T, timeout time.Duration, line string) (string, error) {
	t.Helper()
	bin := n.tetherCLI(t)
	env := fmt.Sprintf("PATH=%s:%s:%s", filepath.Dir(bin), n.kubeBinDir(), os.Getenv("PATH"))
	return n.run(timeout, "", "exec.sh", "env", env, "KUBECONFIG="+filepath.Join(n.clusterDir(), "kubeconfig"),
		"bash", "-o", "pipefail", "-c", line)
}

// kubeBinDir and clusterDir are where hack/cluster's scripts look.
func (n *node) kubeBinDir() string {
	return cmp.Or(os.Getenv("TETHER_KUBE_BIN_DIR"), filepath.Join(n.root, ".cache/kube/bin"))
}

func (n *node) clusterDir() string {
	return cmp.Or(os.Getenv("TETHER_CLUSTER_DIR"), filepath.Join(n.root, ".cache/cluster/run"))
}

var (
	tetherCLIOnce sync.Once
	tetherCLIPath string
	tetherCLIErr  error
)

// tetherCLI builds the tether CLI of this tree once per test binary and
// returns its path (in a directory of its own, so that PATH holds nothing
// else of ours).
func (n *node) tetherCLI(t *testing.T) string {
	t.Helper()
	tetherCLIOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tether-cluster-cli-")
		if err != nil {
			tetherCLIErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "tether"), "./cmd/tether")
		cmd.Dir = n.root
		if out, err := cmd.CombinedOutput(); err != nil {
			tetherCLIErr = fmt.Errorf("go build ./cmd/tether: %v\n%s", err, out)
			return
		}
		tetherCLIPath = filepath.Join(dir, "tether")
	})
	if tetherCLIErr != nil {
		t.Fatal(tetherCLIErr)
	}
	return tetherCLIPath
}
