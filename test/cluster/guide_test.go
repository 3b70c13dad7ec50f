package cluster_test

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
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
