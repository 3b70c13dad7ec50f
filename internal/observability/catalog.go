// Package observability keeps Tether's observability artifacts honest:
// Scan lists the Prometheus metrics the code defines, read from the Go
// source, and ParseExpr reads the metric and label names a PromQL
// expression uses, so that tests check the Grafana dashboard
// (manifests/observability) and docs/observability.md against the code.
package observability

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Metric is one metric family defined in the code.
type Metric struct {
	Name string
	// Type is counter, gauge, histogram or summary; "" for a family
	// described by prometheus.NewDesc (a custom collector).
	Type   string
	Labels []string
	Help   string
	// Pos is where it is defined, file:line relative to the scanned root.
	Pos string
}

const prometheusPkg = "github.com/prometheus/client_golang/prometheus"

// constructors are the prometheus functions that define a metric from
// Opts, with the metric type and whether a label list follows.
var constructors = map[string]struct {
	typ    string
	labels bool
}{
	"NewCounter": {"counter", false}, "NewCounterVec": {"counter", true}, "NewCounterFunc": {"counter", false},
	"NewGauge": {"gauge", false}, "NewGaugeVec": {"gauge", true}, "NewGaugeFunc": {"gauge", false},
	"NewHistogram": {"histogram", false}, "NewHistogramVec": {"histogram", true},
	"NewSummary": {"summary", false}, "NewSummaryVec": {"summary", true},
}

// Scan parses the non-test Go files under dirs (relative to root) and
// returns the metrics they define by name. A definition it cannot read
// (a name or label list that is not a literal) is an error rather than a
// metric left out, so a dashboard can never pass by the scanner's blind
// spot.
func Scan(root string, dirs ...string) (map[string]Metric, error) {
	out := map[string]Metric{}
	fset := token.NewFileSet()
	for _, dir := range dirs {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			return scanFile(fset, root, f, out)
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func scanFile(fset *token.FileSet, root string, f *ast.File, out map[string]Metric) error {
	local := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == prometheusPkg {
			local = "prometheus"
			if imp.Name != nil {
				local = imp.Name.Name
			}
		}
	}
	if local == "" {
		return nil
	}
	var err error
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || err != nil {
			return err == nil
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); !ok || x.Name != local {
			return true
		}
		pos := fset.Position(call.Pos())
		rel, _ := filepath.Rel(root, pos.Filename)
		where := fmt.Sprintf("%s:%d", filepath.ToSlash(rel), pos.Line)
		var m Metric
		switch c, isOpts := constructors[sel.Sel.Name]; {
		case isOpts:
			m, err = fromOpts(call, c.typ, c.labels)
		case sel.Sel.Name == "NewDesc":
			m, err = fromDesc(call)
		default:
			return true
		}
		if err != nil {
			err = fmt.Errorf("%s: %s.%s: %w", where, local, sel.Sel.Name, err)
			return false
		}
		m.Pos = where
		if prev, dup := out[m.Name]; dup && (prev.Type != m.Type || !slices.Equal(prev.Labels, m.Labels)) {
			err = fmt.Errorf("%s: metric %s is also defined, differently, at %s", where, m.Name, prev.Pos)
			return false
		}
		out[m.Name] = m
		return true
	})
	return err
}

// fromOpts reads prometheus.NewX(prometheus.XOpts{Name: ..., Help: ...}[, []string{labels}]).
func fromOpts(call *ast.CallExpr, typ string, withLabels bool) (Metric, error) {
	m := Metric{Type: typ}
	if len(call.Args) == 0 {
		return m, fmt.Errorf("no options")
	}
	lit, ok := call.Args[0].(*ast.CompositeLit)
	if !ok {
		return m, fmt.Errorf("options are not a literal")
	}
	var ns, sub string
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		key, _ := kv.Key.(*ast.Ident)
		if key == nil {
			continue
		}
		var err error
		switch key.Name {
		case "Name":
			m.Name, err = stringLit(kv.Value)
		case "Namespace":
			ns, err = stringLit(kv.Value)
		case "Subsystem":
			sub, err = stringLit(kv.Value)
		case "Help":
			m.Help, _ = stringLit(kv.Value)
		}
		if err != nil {
			return m, fmt.Errorf("%s: %w", key.Name, err)
		}
	}
	m.Name = strings.Join(slices.DeleteFunc([]string{ns, sub, m.Name}, func(s string) bool { return s == "" }), "_")
	if m.Name == "" {
		return m, fmt.Errorf("no Name")
	}
	if withLabels {
		if len(call.Args) < 2 {
			return m, fmt.Errorf("no label names")
		}
		var err error
		if m.Labels, err = stringList(call.Args[1]); err != nil {
			return m, fmt.Errorf("label names: %w", err)
		}
	}
	return m, nil
}

// fromDesc reads prometheus.NewDesc("name", "help", []string{labels} or nil, ...).
func fromDesc(call *ast.CallExpr) (Metric, error) {
	var m Metric
	if len(call.Args) < 3 {
		return m, fmt.Errorf("want name, help and labels")
	}
	var err error
	if m.Name, err = stringLit(call.Args[0]); err != nil {
		return m, fmt.Errorf("name: %w", err)
	}
	m.Help, _ = stringLit(call.Args[1])
	if m.Labels, err = stringList(call.Args[2]); err != nil {
		return m, fmt.Errorf("label names: %w", err)
	}
	return m, nil
}

// stringLit is the value of a string literal or a + of them.
func stringLit(e ast.Expr) (string, error) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind == token.STRING {
			return strconv.Unquote(v.Value)
		}
	case *ast.BinaryExpr:
		if v.Op == token.ADD {
			a, err := stringLit(v.X)
			if err != nil {
				return "", err
			}
			b, err := stringLit(v.Y)
			return a + b, err
		}
	case *ast.ParenExpr:
		return stringLit(v.X)
	}
	return "", fmt.Errorf("not a string literal")
}

// stringList is the value of a []string{...} literal of string literals,
// or nil.
func stringList(e ast.Expr) ([]string, error) {
	if id, ok := e.(*ast.Ident); ok && id.Name == "nil" {
		return nil, nil
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, fmt.Errorf("not a []string literal")
	}
	var out []string
	for _, el := range lit.Elts {
		s, err := stringLit(el)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
