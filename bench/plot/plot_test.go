package main

import (
	"cmp"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// element is one parsed SVG element: its name and attributes.
type element struct {
	name  string
	attrs map[string]string
}

// parseSVG decodes doc strictly as XML and returns its elements in order.
func parseSVG(t *testing.T, doc string) []element {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(doc))
	d.Strict = true
	var out []element
	depth := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not valid XML: %v\n%s", err, doc)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root element %v, want svg in the SVG namespace", tok.Name)
			}
			depth++
			e := element{name: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			out = append(out, e)
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 {
		t.Fatalf("unbalanced elements (depth %d at the end)", depth)
	}
	return out
}

func num(t *testing.T, e element, attr string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attrs[attr], 64)
	if err != nil {
		t.Fatalf("%s %s=%q: %v", e.name, attr, e.attrs[attr], err)
	}
	return v
}

func sampleChart() Chart {
	cats := []string{"p50", "p90", "p99", "p99.9"}
	return Chart{
		Title:    "Latency",
		Subtitle: strings.Repeat("a long subtitle that has to wrap; ", 10),
		Panels: []Panel{
			{Title: "keep-alive", Categories: cats, Series: []Series{
				{"direct", []float64{73, 120, 530, 900}},
				{"relay", []float64{531, 700, 1156, 2000}},
				{"tether", []float64{575, 760, 1248, 2500}},
				{"stunnel", []float64{631, 900, 2192, 5000}},
				{"haproxy", []float64{536, 710, 1333, 2400}},
			}},
			{Title: "new connection", Categories: cats, Series: []Series{
				{"direct", []float64{300, 500, 900, 2000}},
				{"relay", []float64{900, 1500, 3000, 8000}},
				{"tether", []float64{1000, 1800, 3500, 9000}},
				{"stunnel", []float64{8000, 12000, 30000, 0}}, // p99.9 missing
				{"haproxy", []float64{7000, 11000, 25000, 60000}},
			}},
		},
	}
}

func render(t *testing.T, c Chart) string {
	t.Helper()
	var b strings.Builder
	if err := Render(&b, c); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestRenderSeries: the SVG is valid XML with a legend entry per series
// and a bar per series and category, except missing values.
func TestRenderSeries(t *testing.T) {
	c := sampleChart()
	els := parseSVG(t, render(t, c))
	legend := map[string]int{}
	bars := map[string]int{}
	panels := 0
	for _, e := range els {
		switch {
		case e.attrs["class"] == "legend-entry":
			legend[e.attrs["data-series"]]++
		case e.attrs["class"] == "bar":
			bars[e.attrs["data-series"]+" "+e.attrs["data-category"]]++
		case e.attrs["class"] == "panel":
			panels++
		}
	}
	if panels != len(c.Panels) {
		t.Errorf("%d panels, want %d", panels, len(c.Panels))
	}
	for _, s := range c.Panels[0].Series {
		if legend[s.Name] != 1 {
			t.Errorf("series %q: %d legend entries, want 1", s.Name, legend[s.Name])
		}
		for _, cat := range c.Panels[0].Categories {
			want := len(c.Panels)
			if s.Name == "stunnel" && cat == "p99.9" {
				want = 1 // missing in the second panel
			}
			if got := bars[s.Name+" "+cat]; got != want {
				t.Errorf("series %q, %s: %d bars, want %d", s.Name, cat, got, want)
			}
		}
	}
}

// TestRenderLogBars: in the SVG, a bar's height is proportional to the
// logarithm of its value over the axis minimum, so bars grow with their
// values, and the axis ticks are ordered.
func TestRenderLogBars(t *testing.T) {
	els := parseSVG(t, render(t, sampleChart()))
	var panel []element
	var panels [][]element
	for _, e := range els {
		if e.attrs["class"] == "panel" && panel != nil {
			panels = append(panels, panel)
			panel = nil
		}
		panel = append(panel, e)
	}
	panels = append(panels, panel)
	for i, p := range panels[1:] { // panels[0] is the header
		var axis element
		var ticks, bars []element
		for _, e := range p {
			switch e.attrs["class"] {
			case "y-axis":
				axis = e
			case "tick major", "tick minor":
				ticks = append(ticks, e)
			case "bar":
				bars = append(bars, e)
			}
		}
		if axis.attrs["data-scale"] != "log10" {
			t.Fatalf("panel %d: no log10 y axis", i)
		}
		lo, hi := num(t, axis, "data-min"), num(t, axis, "data-max")
		if lo <= 0 || hi <= lo || math.Mod(math.Log10(lo), 1) != 0 || math.Mod(math.Log10(hi), 1) != 0 {
			t.Errorf("panel %d: axis from %g to %g, want powers of ten", i, lo, hi)
		}
		for j := 1; j < len(ticks); j++ {
			if v0, v1 := num(t, ticks[j-1], "data-value"), num(t, ticks[j], "data-value"); v1 <= v0 || num(t, ticks[j], "y1") >= num(t, ticks[j-1], "y1") {
				t.Errorf("panel %d: tick %g then %g: values must rise and move up", i, v0, v1)
			}
		}
		// height = k·log10(v/lo) with the same k for every bar.
		var k float64
		for _, b := range bars {
			v, h := num(t, b, "data-value"), num(t, b, "height")
			if v < lo || v > hi {
				t.Errorf("panel %d: bar %g outside the axis [%g, %g]", i, v, lo, hi)
			}
			kb := h / math.Log10(v/lo)
			if k == 0 {
				k = kb
			} else if math.Abs(kb-k) > 0.05 {
				t.Errorf("panel %d: bar %s %s (%g) height %g is not on the log scale of the others (%.3f vs %.3f px per decade)",
					i, b.attrs["data-series"], b.attrs["data-category"], v, h, kb, k)
			}
		}
		// Within a series, the bar of a larger value is taller and its
		// top higher.
		bySeries := map[string][]element{}
		for _, b := range bars {
			bySeries[b.attrs["data-series"]] = append(bySeries[b.attrs["data-series"]], b)
		}
		for name, bs := range bySeries {
			slices.SortFunc(bs, func(a, b element) int { return cmp.Compare(num(t, a, "data-value"), num(t, b, "data-value")) })
			for j := 1; j < len(bs); j++ {
				if num(t, bs[j], "height") <= num(t, bs[j-1], "height") || num(t, bs[j], "y") >= num(t, bs[j-1], "y") {
					t.Errorf("panel %d, %s: bar of %s is not taller than that of %s", i, name, bs[j].attrs["data-value"], bs[j-1].attrs["data-value"])
				}
			}
		}
	}
}

func TestLogScale(t *testing.T) {
	for _, tc := range []struct {
		name   string
		vals   []float64
		lo, hi float64
	}{
		{"keep-alive µs", []float64{73, 530, 2192}, 10, 10000},
		{"one value", []float64{500}, 100, 10000},
		{"power of ten", []float64{100, 1000}, 10, 10000},
		{"missing values ignored", []float64{0, -1, math.NaN(), math.Inf(1), 40}, 10, 1000},
		{"below one", []float64{0.3, 2}, 0.1, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newLogScale(tc.vals, 300, 60)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(s.lo-tc.lo) > 1e-9*tc.lo || math.Abs(s.hi-tc.hi) > 1e-9*tc.hi {
				t.Errorf("scale [%g, %g], want [%g, %g]", s.lo, s.hi, tc.lo, tc.hi)
			}
			if s.y(s.lo) != 300 || math.Abs(s.y(s.hi)-60) > 1e-9 {
				t.Errorf("y(lo) %g, y(hi) %g: want the plot's bottom and top", s.y(s.lo), s.y(s.hi))
			}
			// Strictly monotonic, and each decade equally tall.
			prev := math.Inf(1)
			for v := s.lo; v <= s.hi; v *= 1.1 {
				if y := s.y(v); y >= prev {
					t.Fatalf("y(%g) = %g, not above y of a smaller value (%g)", v, y, prev)
				} else {
					prev = y
				}
			}
			dec := s.y(s.lo) - s.y(10*s.lo)
			for v := s.lo; v*10 <= s.hi*1.0001; v *= 10 {
				if d := s.y(v) - s.y(10*v); math.Abs(d-dec) > 1e-9 {
					t.Errorf("decade from %g is %g tall, the first %g", v, d, dec)
				}
			}
			ticks := s.ticks()
			for j := 1; j < len(ticks); j++ {
				if ticks[j].v <= ticks[j-1].v {
					t.Errorf("ticks out of order: %v", ticks)
				}
			}
			if !ticks[0].major || !ticks[len(ticks)-1].major || ticks[len(ticks)-1].v < s.hi*0.999 {
				t.Errorf("ticks %v do not span [lo, hi] with labelled ends", ticks)
			}
		})
	}
	if _, err := newLogScale([]float64{0, -3, math.NaN()}, 300, 60); !errors.Is(err, errNoData) {
		t.Errorf("no positive value: err %v, want errNoData", err)
	}
}

func TestFormatUS(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{{1, "1 µs"}, {2.5, "2.5 µs"}, {10, "10 µs"}, {575, "575 µs"}, {1000, "1 ms"}, {1248, "1.25 ms"}, {100000, "100 ms"}, {2e6, "2 s"}} {
		if got := formatUS(tc.v); got != tc.want {
			t.Errorf("formatUS(%g) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestRenderRejects(t *testing.T) {
	cats := []string{"p50"}
	for _, tc := range []struct {
		name string
		c    Chart
	}{
		{"no panel", Chart{}},
		{"no series", Chart{Panels: []Panel{{Categories: cats}}}},
		{"values do not match categories", Chart{Panels: []Panel{{Categories: cats, Series: []Series{{"a", []float64{1, 2}}}}}}},
		{"panels with other series", Chart{Panels: []Panel{
			{Categories: cats, Series: []Series{{"a", []float64{1}}}},
			{Categories: cats, Series: []Series{{"b", []float64{1}}}}}}},
		{"nothing to draw", Chart{Panels: []Panel{{Categories: cats, Series: []Series{{"a", []float64{0}}}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Render(io.Discard, tc.c); err == nil {
				t.Error("rendered; want an error")
			}
		})
	}
}

// TestEscapes: names and titles with XML's special characters keep the
// document valid.
func TestEscapes(t *testing.T) {
	c := Chart{Title: `a <b> & "c"`, Subtitle: "x & y", Panels: []Panel{{Title: "<p>", Categories: []string{"p&50"},
		Series: []Series{{`s"1<`, []float64{10}}}}}}
	els := parseSVG(t, render(t, c))
	if !slices.ContainsFunc(els, func(e element) bool { return e.attrs["data-series"] == `s"1<` }) {
		t.Error("escaped series name not found after parsing")
	}
}

// TestRun draws a proxybench -json report into a file.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "proxy.json")
	report := `{"tool": "proxybench", "start": "2026-11-27T00:27:00Z", "go": "go1.26.8", "num_cpu": 2,
 "settings": {"rounds": 5, "duration": "5s", "warmup": "1s", "conns": 16, "size_bytes": 1024},
 "setups": [
  {"name": "direct", "median_latency_us": {"keepalive": {"p50": 73, "p90": 200, "p99": 530, "p99.9": 900}, "new_conn": {"p50": 500, "p90": 800, "p99": 1500, "p99.9": 3000}}},
  {"name": "tether", "median_latency_us": {"keepalive": {"p50": 575, "p90": 800, "p99": 1248, "p99.9": 2500}, "new_conn": {"p50": 1500, "p90": 2500, "p99": 4000, "p99.9": 9000}}},
  {"name": "haproxy", "median_latency_us": {"keepalive": {"p50": 536, "p90": 790, "p99": 1333, "p99.9": 2400}, "new_conn": {"p50": 9000, "p90": 14000, "p99": 30000, "p99.9": 60000}}}
 ]}`
	if err := os.WriteFile(in, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "latency.svg")
	if err := run(Config{In: in, Out: out, Workloads: []string{"keepalive", "new_conn"}, Note: "commit abc"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2026-11-27 00:27 UTC", "medians of 5 rounds of 5s", "commit abc", `data-series="haproxy"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	parseSVG(t, string(b))

	if err := run(Config{In: in, Out: out, Setups: []string{"stunnel"}, Workloads: []string{"keepalive"}}); err == nil || !strings.Contains(err.Error(), `"stunnel" is not in the report`) {
		t.Errorf("unknown setup: err %v", err)
	}
	if err := os.WriteFile(in, []byte(`{"tool": "signbench"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(Config{In: in, Out: out, Workloads: []string{"keepalive"}}); err == nil {
		t.Error("drew a report that is not proxybench's")
	}
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-out", "x.svg"}); err == nil {
		t.Error("no -in: want an error")
	}
	if _, err := parseFlags([]string{"-in", "a.json", "-workloads", "bulk"}); err == nil {
		t.Error("unknown workload: want an error")
	}
	c, err := parseFlags([]string{"-in", "a.json", "-setups", "direct, tether,,haproxy"})
	if err != nil || !slices.Equal(c.Setups, []string{"direct", "tether", "haproxy"}) || !slices.Equal(c.Workloads, []string{"keepalive", "new_conn"}) {
		t.Errorf("parseFlags: %+v, %v", c, err)
	}
}
