package main

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Chart is a titled set of panels that share a legend: every panel has the
// same series, in the same order.
type Chart struct {
	Title, Subtitle string
	Panels          []Panel
}

// Panel is one grouped bar chart on a logarithmic axis: a group of bars
// per category, a bar per series.
type Panel struct {
	Title      string
	Categories []string
	Series     []Series
}

// Series is one setup's values, one per category, in microseconds. A value
// that is not positive (or NaN) is missing and not drawn.
type Series struct {
	Name   string
	Values []float64
}

// Layout, in SVG user units (pixels).
const (
	width        = 960.0
	marginLeft   = 90.0
	marginRight  = 20.0
	panelHeight  = 330.0 // title, plot area and x labels
	plotTop      = 34.0  // from the panel's top to the plot area
	plotHeight   = 240.0 // the plot area
	charWidth    = 6.2   // of the 11px subtitle font, for wrapping
	legendRowGap = 22.0
)

// colors gives the usual setups fixed colours, so charts of different runs
// compare at a glance; others take the fallback palette in turn.
var colors = map[string]string{
	"direct":           "#8c8c8c",
	"relay":            "#c5a25a",
	"tether":           "#1f77b4",
	"stunnel":          "#d62728",
	"haproxy":          "#2ca02c",
	"stunnel-noresume": "#f2a3a3",
	"haproxy-noresume": "#9fd99a",
}

var fallback = []string{"#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f00"}

func seriesColors(series []Series) []string {
	out := make([]string, len(series))
	next := 0
	for i, s := range series {
		if c, ok := colors[s.Name]; ok {
			out[i] = c
			continue
		}
		out[i] = fallback[next%len(fallback)]
		next++
	}
	return out
}

// logScale maps values to y coordinates, powers of ten lo ≤ v ≤ hi to
// yLo ≥ y ≥ yHi (SVG's y grows downwards).
type logScale struct {
	lo, hi   float64
	yLo, yHi float64
}

var errNoData = errors.New("no positive value to draw")

// newLogScale spans whole decades around every positive value of vals,
// with room for the smallest bar to show (at least half a decade tall, the
// factor 2 below) and for the value written above the tallest (the factor
// 3 above).
func newLogScale(vals []float64, yLo, yHi float64) (logScale, error) {
	mn, mx := math.Inf(1), math.Inf(-1)
	for _, v := range vals {
		if v > 0 && !math.IsInf(v, 0) {
			mn, mx = math.Min(mn, v), math.Max(mx, v)
		}
	}
	if math.IsInf(mn, 1) {
		return logScale{}, errNoData
	}
	lo := math.Pow(10, math.Floor(math.Log10(mn/2)))
	hi := math.Pow(10, math.Ceil(math.Log10(mx*3)))
	if hi <= lo {
		hi = lo * 10
	}
	return logScale{lo: lo, hi: hi, yLo: yLo, yHi: yHi}, nil
}

func (s logScale) y(v float64) float64 {
	f := (math.Log10(v) - math.Log10(s.lo)) / (math.Log10(s.hi) - math.Log10(s.lo))
	return s.yLo + f*(s.yHi-s.yLo)
}

type tick struct {
	v     float64
	major bool // a power of ten, labelled
}

// ticks are the powers of ten from lo to hi, and 2× and 5× between them.
func (s logScale) ticks() []tick {
	var out []tick
	for d := s.lo; d <= s.hi*1.0001; d *= 10 {
		out = append(out, tick{v: d, major: true})
		if d*10 <= s.hi*1.0001 {
			out = append(out, tick{v: 2 * d}, tick{v: 5 * d})
		}
	}
	return out
}

// formatUS writes a latency given in microseconds with a unit that keeps
// it short: 73 µs, 1.25 ms, 2 s.
func formatUS(v float64) string {
	switch {
	case v < 10:
		return trim(strconv.FormatFloat(v, 'f', 1, 64)) + " µs"
	case v < 1000:
		return strconv.FormatFloat(v, 'f', 0, 64) + " µs"
	case v < 1e6:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + " ms"
	default:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + " s"
	}
}

func trim(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// wrap splits s into lines of at most n characters, at spaces.
func wrap(s string, n int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len([]rune(line))+1+len([]rune(w)) > n {
			lines = append(lines, line)
			line = w
			continue
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

func (c Chart) check() error {
	if len(c.Panels) == 0 {
		return errors.New("chart: no panel")
	}
	for _, p := range c.Panels {
		if len(p.Categories) == 0 || len(p.Series) == 0 {
			return fmt.Errorf("panel %q: no categories or no series", p.Title)
		}
		if len(p.Series) != len(c.Panels[0].Series) {
			return fmt.Errorf("panel %q: %d series, the first panel has %d", p.Title, len(p.Series), len(c.Panels[0].Series))
		}
		for i, s := range p.Series {
			if s.Name != c.Panels[0].Series[i].Name {
				return fmt.Errorf("panel %q: series %d is %q, the first panel's is %q", p.Title, i, s.Name, c.Panels[0].Series[i].Name)
			}
			if len(s.Values) != len(p.Categories) {
				return fmt.Errorf("panel %q, series %q: %d values for %d categories", p.Title, s.Name, len(s.Values), len(p.Categories))
			}
		}
	}
	return nil
}

// Render writes c as a standalone SVG document.
func Render(w io.Writer, c Chart) error {
	if err := c.check(); err != nil {
		return err
	}
	series := c.Panels[0].Series
	cols := seriesColors(series)

	// Header: title, wrapped subtitle, legend rows.
	sub := wrap(c.Subtitle, int(math.Floor((width-2*marginRight)/charWidth)))
	y := 54.0 + 16*float64(len(sub)) // the legend's first baseline, below the subtitle
	type entry struct {
		x, y float64
		i    int
	}
	var legend []entry
	x := marginLeft
	for i, s := range series {
		wd := 28 + 7.5*float64(len([]rune(s.Name)))
		if x+wd > width-marginRight && x > marginLeft {
			x, y = marginLeft, y+legendRowGap
		}
		legend = append(legend, entry{x, y, i})
		x += wd + 14
	}
	top := y + 18
	height := top + panelHeight*float64(len(c.Panels))

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="Helvetica, Arial, sans-serif">
`, width, height, width, height)
	fmt.Fprintf(b, "<title>%s</title>\n", esc(c.Title))
	fmt.Fprintf(b, `<rect x="0" y="0" width="%g" height="%g" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(b, `<text x="%g" y="26" font-size="18" font-weight="bold">%s</text>`+"\n", marginRight, esc(c.Title))
	for i, l := range sub {
		fmt.Fprintf(b, `<text x="%g" y="%g" font-size="11" fill="#444444">%s</text>`+"\n", marginRight, 46+16*float64(i), esc(l))
	}
	b.WriteString(`<g class="legend">` + "\n")
	for _, e := range legend {
		fmt.Fprintf(b, `<g class="legend-entry" data-series="%s"><rect x="%g" y="%g" width="14" height="14" fill="%s"/><text x="%g" y="%g" font-size="13">%s</text></g>`+"\n",
			esc(series[e.i].Name), e.x, e.y-11, cols[e.i], e.x+20, e.y, esc(series[e.i].Name))
	}
	b.WriteString("</g>\n")

	for pi, p := range c.Panels {
		if err := renderPanel(b, p, cols, top+panelHeight*float64(pi)); err != nil {
			return fmt.Errorf("panel %q: %w", p.Title, err)
		}
	}
	b.WriteString("</svg>\n")
	return b.Flush()
}

func renderPanel(b *bufio.Writer, p Panel, cols []string, top float64) error {
	var all []float64
	for _, s := range p.Series {
		all = append(all, s.Values...)
	}
	yLo, yHi := top+plotTop+plotHeight, top+plotTop
	sc, err := newLogScale(all, yLo, yHi)
	if err != nil {
		return err
	}
	left, right := marginLeft, width-marginRight
	fmt.Fprintf(b, `<g class="panel" data-title="%s">`+"\n", esc(p.Title))
	fmt.Fprintf(b, `<text x="%g" y="%g" font-size="14" font-weight="bold">%s</text>`+"\n", left, top+18, esc(p.Title))

	// Grid and y axis.
	fmt.Fprintf(b, `<g class="y-axis" data-scale="log10" data-min="%g" data-max="%g">`+"\n", sc.lo, sc.hi)
	for _, t := range sc.ticks() {
		ty := sc.y(t.v)
		if t.major {
			fmt.Fprintf(b, `<line class="tick major" data-value="%g" x1="%g" y1="%.2f" x2="%g" y2="%.2f" stroke="#cccccc" stroke-width="1"/>`+"\n", t.v, left-5, ty, right, ty)
			fmt.Fprintf(b, `<text x="%g" y="%.2f" font-size="11" text-anchor="end">%s</text>`+"\n", left-8, ty+4, esc(formatUS(t.v)))
		} else {
			fmt.Fprintf(b, `<line class="tick minor" data-value="%g" x1="%g" y1="%.2f" x2="%g" y2="%.2f" stroke="#eeeeee" stroke-width="1"/>`+"\n", t.v, left, ty, right, ty)
		}
	}
	b.WriteString("</g>\n")
	fmt.Fprintf(b, `<text transform="translate(%g %g) rotate(-90)" font-size="12" text-anchor="middle">latency (log scale)</text>`+"\n",
		left-62, (yLo+yHi)/2)

	// Bars.
	group := (right - left) / float64(len(p.Categories))
	bar := group * 0.8 / float64(len(p.Series))
	for ci, cat := range p.Categories {
		gx := left + group*float64(ci) + group*0.1
		for si, s := range p.Series {
			v := s.Values[ci]
			if !(v > 0) || math.IsInf(v, 0) {
				continue
			}
			bx := gx + bar*float64(si)
			by := sc.y(v)
			fmt.Fprintf(b, `<rect class="bar" data-series="%s" data-category="%s" data-value="%g" x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				esc(s.Name), esc(cat), v, bx, by, bar-1, yLo-by, cols[si], esc(s.Name), esc(cat), esc(formatUS(v)))
			// The value above the bar, turned to fit narrow bars.
			fmt.Fprintf(b, `<text transform="translate(%.2f %.2f) rotate(-90)" font-size="9" fill="#333333">%s</text>`+"\n",
				bx+bar/2+3, by-3, esc(formatUS(v)))
		}
		fmt.Fprintf(b, `<text x="%.2f" y="%g" font-size="12" text-anchor="middle">%s</text>`+"\n", left+group*(float64(ci)+0.5), yLo+18, esc(cat))
	}
	// Axes on top of the bars.
	fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#000000"/>`+"\n", left, yHi, left, yLo)
	fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#000000"/>`+"\n", left, yLo, right, yLo)
	fmt.Fprintf(b, `<text x="%g" y="%g" font-size="12" text-anchor="middle">percentile</text>`+"\n", (left+right)/2, yLo+36)
	b.WriteString("</g>\n")
	return nil
}
