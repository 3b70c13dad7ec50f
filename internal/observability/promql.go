package observability

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Selector is one metric a PromQL expression selects, with the label
// names its matchers use.
type Selector struct {
	Metric string
	Labels []string
}

// Refs is what a PromQL expression refers to.
type Refs struct {
	Selectors []Selector
	// Grouping are the label names of by, without, on, ignoring,
	// group_left and group_right clauses.
	Grouping []string
}

var (
	grafanaVar = regexp.MustCompile(`\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*`)
	quoted     = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	brackets   = regexp.MustCompile(`\[[^\]]*\]`)
	tokenRE    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*|[0-9][0-9A-Za-z.]*|=~|!~|!=|==|>=|<=|[(){},=<>+\-*/%^]|\S`)
)

// aggregations and keywords are the PromQL words that are not metric
// names.
var (
	aggregations = []string{"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
		"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
	keywords      = []string{"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"}
	groupingWords = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	matchOps      = []string{"=", "!=", "=~", "!~"}
)

// ParseExpr reads the metric names and label names a PromQL expression
// uses. Grafana variables ($x, ${x}) are accepted anywhere. It knows
// PromQL's shape, not its full grammar: enough to check names against
// the code.
func ParseExpr(expr string) (Refs, error) {
	var r Refs
	s := grafanaVar.ReplaceAllString(expr, "0")
	s = quoted.ReplaceAllString(s, `""`)
	s = brackets.ReplaceAllString(s, " ")
	toks := tokenRE.FindAllString(s, -1)
	isIdent := func(t string) bool {
		return t != "" && (t[0] == '_' || t[0] == ':' || (t[0]|0x20 >= 'a' && t[0]|0x20 <= 'z'))
	}
	at := func(i int) string {
		if i < len(toks) {
			return toks[i]
		}
		return ""
	}
	// labelsIn reads a {…} matcher list starting at toks[i] == "{" and
	// returns its label names and the index after "}".
	labelsIn := func(i int) ([]string, int, error) {
		var labels []string
		for i++; i < len(toks) && toks[i] != "}"; i++ {
			if isIdent(toks[i]) && slices.Contains(matchOps, at(i+1)) {
				labels = append(labels, toks[i])
			}
		}
		if i >= len(toks) {
			return nil, i, fmt.Errorf("unclosed { in %q", expr)
		}
		return labels, i + 1, nil
	}
	for i := 0; i < len(toks); {
		t := toks[i]
		switch {
		case slices.Contains(groupingWords, t):
			i++
			if at(i) != "(" {
				if t == "group_left" || t == "group_right" {
					continue // no label list
				}
				return r, fmt.Errorf("%s without ( in %q", t, expr)
			}
			for i++; i < len(toks) && toks[i] != ")"; i++ {
				if isIdent(toks[i]) {
					r.Grouping = append(r.Grouping, toks[i])
				}
			}
			i++
		case t == "{":
			labels, next, err := labelsIn(i)
			if err != nil {
				return r, err
			}
			r.Selectors = append(r.Selectors, Selector{Labels: labels}) // {__name__=…}
			i = next
		case !isIdent(t), slices.Contains(aggregations, t), slices.Contains(keywords, t):
			i++
		case at(i+1) == "(":
			i++ // a function
		default:
			sel := Selector{Metric: t}
			i++
			if at(i) == "{" {
				labels, next, err := labelsIn(i)
				if err != nil {
					return r, err
				}
				sel.Labels, i = labels, next
			}
			r.Selectors = append(r.Selectors, sel)
		}
	}
	return r, nil
}

// histogramSuffixes are the series names a histogram adds to its name.
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// TargetLabels are the labels Prometheus adds to every scraped series.
var TargetLabels = []string{"job", "instance"}

// Check checks the names expr uses against metrics: every metric exists
// (a histogram's _bucket, _sum and _count series included), every matcher
// names a label of its metric, and every grouping label is a label of a
// metric of the expression ("le" with a histogram's buckets) or a target
// label. It returns one error per problem.
func Check(expr string, metrics map[string]Metric) []error {
	refs, err := ParseExpr(expr)
	if err != nil {
		return []error{err}
	}
	var errs []error
	known := slices.Clone(TargetLabels)
	for _, sel := range refs.Selectors {
		if sel.Metric == "" {
			errs = append(errs, fmt.Errorf("a selector without a metric name in %q", expr))
			continue
		}
		m, ok := lookup(sel.Metric, metrics)
		if !ok {
			errs = append(errs, fmt.Errorf("metric %s is not defined in the code (expression %q)", sel.Metric, expr))
			continue
		}
		labels := append(slices.Clone(m.Labels), TargetLabels...)
		if strings.HasSuffix(sel.Metric, "_bucket") && m.Type == "histogram" {
			labels = append(labels, "le")
		}
		for _, l := range sel.Labels {
			if !slices.Contains(labels, l) {
				errs = append(errs, fmt.Errorf("%s has no label %s (it has %v; expression %q)", sel.Metric, l, m.Labels, expr))
			}
		}
		known = append(known, labels...)
	}
	for _, l := range refs.Grouping {
		if !slices.Contains(known, l) {
			errs = append(errs, fmt.Errorf("grouping label %s is not a label of any metric of %q", l, expr))
		}
	}
	return errs
}

// lookup finds the metric a series name belongs to.
func lookup(series string, metrics map[string]Metric) (Metric, bool) {
	if m, ok := metrics[series]; ok {
		return m, true
	}
	for _, suf := range histogramSuffixes {
		if base, ok := strings.CutSuffix(series, suf); ok {
			if m, ok := metrics[base]; ok && (m.Type == "histogram" || m.Type == "summary") {
				if suf == "_bucket" && m.Type == "summary" {
					return Metric{}, false
				}
				return m, true
			}
		}
	}
	return Metric{}, false
}
