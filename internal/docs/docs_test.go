package docs

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// root is the repository's top directory, from this package's directory.
var root = filepath.Join("..", "..")

// outsideRefs are the ways a file could point at the design contract that
// used to live outside the repository. They are built from pieces so that
// this file does not match them itself.
var outsideRefs = []string{".." + "/shared", "DESIGN" + ".md"}

// TestNoReferenceOutsideTheRepository: no tracked file depends on the
// design document that lived next to the repository; docs/architecture.md
// replaced it.
func TestNoReferenceOutsideTheRepository(t *testing.T) {
	files := trackedFiles(t)
	if len(files) < 100 {
		t.Fatalf("git ls-files lists %d files; expected the whole repository", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(root, f))
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted in the work tree, not yet committed
		}
		if err != nil {
			t.Fatalf("reading %s: %v", f, err)
		}
		for _, ref := range outsideRefs {
			if i := bytes.Index(data, []byte(ref)); i >= 0 {
				line := bytes.Count(data[:i], []byte("\n")) + 1
				t.Errorf("%s:%d mentions %q: point it at docs/architecture.md instead", f, line, ref)
			}
		}
	}
}

// trackedFiles lists the files git tracks, relative to root.
func trackedFiles(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%v: %s", err, ee.Stderr)
		}
		t.Fatalf("git ls-files (the test needs a git checkout and git): %v", err)
	}
	var files []string
	for _, f := range strings.Split(string(out), "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	return files
}

// portRow is one row of docs/architecture.md's port table.
type portRow struct {
	line int
	port int
	// addr is the default listen address the row gives, e.g. ":8443".
	addr string
	// code are the places in the code that hold the default.
	code []codeRef
}

// codeRef is a default in the code: file is the Go file, relative to root;
// flag is the flag whose default it is (without dashes), or constant the
// constant that holds it.
type codeRef struct {
	file, flag, constant string
}

var backticked = regexp.MustCompile("`([^`]+)`")

// portTable parses the table under "## Ports" of docs/architecture.md.
// Columns: port | listener | protocol | default address | who connects |
// default in the code. The last column is `FILE` flag `--NAME` or `FILE`
// const `NAME`.
func portTable(t *testing.T) []portRow {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if l == "## Ports" {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatal(`docs/architecture.md has no section "## Ports"`)
	}
	var rows []portRow
	inTable := false
	for i := start + 1; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "## ") {
			break
		}
		if !strings.HasPrefix(l, "|") {
			if inTable {
				break // the first table of the section only
			}
			continue
		}
		if !inTable {
			inTable = true
			continue // the header
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		if strings.Trim(cells[0], " -") == "" {
			continue // the separator
		}
		if len(cells) != 6 {
			t.Fatalf("docs/architecture.md:%d: %d columns, want 6: %s", i+1, len(cells), l)
		}
		r := portRow{line: i + 1}
		if r.port, err = strconv.Atoi(strings.TrimSpace(cells[0])); err != nil {
			t.Fatalf("docs/architecture.md:%d: port %q is not a number", i+1, cells[0])
		}
		if m := backticked.FindStringSubmatch(cells[3]); m != nil {
			r.addr = m[1]
		} else {
			t.Fatalf("docs/architecture.md:%d: the default address column names no `address`: %s", i+1, cells[3])
		}
		for _, part := range strings.Split(cells[5], ";") {
			c, err := parseCodeRef(part)
			if err != nil {
				t.Fatalf("docs/architecture.md:%d: %v", i+1, err)
			}
			r.code = append(r.code, c)
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatal(`docs/architecture.md's "## Ports" section has no port table`)
	}
	return rows
}

// parseCodeRef parses `FILE` flag `--NAME` or `FILE` const `NAME`.
func parseCodeRef(s string) (codeRef, error) {
	code := backticked.FindAllStringSubmatch(s, -1)
	kind := strings.TrimSpace(backticked.ReplaceAllString(s, ""))
	if len(code) != 2 {
		return codeRef{}, fmt.Errorf("the code column wants `FILE` flag `--NAME` or `FILE` const `NAME` (several separated by ;), got %q", s)
	}
	c := codeRef{file: code[0][1]}
	switch kind {
	case "flag":
		c.flag = strings.TrimLeft(code[1][1], "-")
	case "const":
		c.constant = code[1][1]
	default:
		return codeRef{}, fmt.Errorf("the code column says %q, want flag or const: %q", kind, s)
	}
	return c, nil
}

// TestArchitecturePortsAreTheCodesDefaults: every row of the port table of
// docs/architecture.md gives the default the code it names really has.
func TestArchitecturePortsAreTheCodesDefaults(t *testing.T) {
	for _, r := range portTable(t) {
		_, port, err := net.SplitHostPort(r.addr)
		if err != nil {
			t.Errorf("docs/architecture.md:%d: default address %q: %v", r.line, r.addr, err)
			continue
		}
		if port != strconv.Itoa(r.port) {
			t.Errorf("docs/architecture.md:%d: port %d, but its default address is %s", r.line, r.port, r.addr)
		}
		for _, c := range r.code {
			if err := c.check(r.addr, port); err != nil {
				t.Errorf("docs/architecture.md:%d: %v", r.line, err)
			}
		}
	}
}

// check reports whether the code holds the default addr: a flag's default
// and a string constant are whole addresses; a numeric constant is the
// port alone.
func (c codeRef) check(addr, port string) error {
	f, err := parseGo(c.file)
	if err != nil {
		return err
	}
	if c.flag != "" {
		got, err := flagDefault(f, c.flag)
		if err != nil {
			return fmt.Errorf("%s: %w", c.file, err)
		}
		if got != addr {
			return fmt.Errorf("says --%s defaults to %s; %s says %s", c.flag, addr, c.file, got)
		}
		return nil
	}
	got, err := constValue(f, c.constant)
	if err != nil {
		return fmt.Errorf("%s: %w", c.file, err)
	}
	want := addr
	if _, err := strconv.Atoi(got); err == nil {
		want = port
	}
	if got != want {
		return fmt.Errorf("says %s is %s; %s says %s", c.constant, want, c.file, got)
	}
	return nil
}

// parseGo parses the Go file at path (relative to root).
func parseGo(path string) (*ast.File, error) {
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root, path), nil, 0)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return f, nil
}

// flagDefault finds the flag registration fs.XxxVar(&v, "name", "default",
// ...) or fs.Xxx("name", "default", ...) for name in f, and returns the
// default, which must be a string literal.
func flagDefault(f *ast.File, name string) (string, error) {
	var found []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		for i, a := range call.Args[:max(len(call.Args)-1, 0)] {
			if s, ok := stringLit(a); ok && s == name {
				if d, ok := stringLit(call.Args[i+1]); ok {
					found = append(found, d)
				}
				break
			}
		}
		return true
	})
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no flag %q with a literal default", name)
	case 1:
		return found[0], nil
	default:
		return "", fmt.Errorf("flag %q is registered %d times", name, len(found))
	}
}

// constValue returns the literal value of the constant name declared in f.
func constValue(f *ast.File, name string) (string, error) {
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, id := range vs.Names {
				if id.Name != name || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					return "", fmt.Errorf("constant %s is not a literal", name)
				}
				if lit.Kind == token.STRING {
					return strconv.Unquote(lit.Value)
				}
				return lit.Value, nil
			}
		}
	}
	return "", fmt.Errorf("no constant %s", name)
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// TestCodeRefCheck: the check behind the port table finds a wrong default,
// a missing flag and a missing constant, so a passing table means something.
func TestCodeRefCheck(t *testing.T) {
	for _, tc := range []struct {
		name       string
		c          codeRef
		addr, port string
		ok         bool
	}{
		{"flag right", codeRef{file: "cmd/ca/main.go", flag: "listen"}, ":8443", "8443", true},
		{"flag wrong", codeRef{file: "cmd/ca/main.go", flag: "listen"}, ":8444", "8444", false},
		{"flag with another host", codeRef{file: "cmd/ca/main.go", flag: "listen"}, "127.0.0.1:8443", "8443", false},
		{"no such flag", codeRef{file: "cmd/ca/main.go", flag: "no-such-flag"}, ":8443", "8443", false},
		{"numeric const right", codeRef{file: "pkg/proxy/capture/config.go", constant: "DefaultDNSPort"}, "127.0.0.1:15053", "15053", true},
		{"numeric const wrong", codeRef{file: "pkg/proxy/capture/config.go", constant: "DefaultDNSPort"}, "127.0.0.1:15054", "15054", false},
		{"string const wrong host", codeRef{file: "internal/sidecar/sidecar.go", constant: "DefaultDNSListen"}, ":15053", "15053", false},
		{"no such const", codeRef{file: "pkg/proxy/capture/config.go", constant: "NoSuchPort"}, ":1", "1", false},
		{"no such file", codeRef{file: "cmd/nothing/main.go", flag: "listen"}, ":1", "1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.check(tc.addr, tc.port)
			if (err == nil) != tc.ok {
				t.Errorf("check(%q) = %v, want ok %v", tc.addr, err, tc.ok)
			}
		})
	}
}
