package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// What the demo reports comes from the components themselves: their
// access logs, /metrics and /debug/identity, and the Workload API.

// accessEntry is one line of a sidecar's access log (pkg/proxy.AccessLog).
type accessEntry struct {
	Direction   string `json:"direction"`
	SourceID    string `json:"source_id"`
	DestID      string `json:"destination_id"`
	Destination string `json:"destination"`
	Decision    string `json:"decision"`
	Reason      string `json:"reason"`
	Rule        string `json:"rule"`
}

// accessLogSize is where the next entry of a log will start.
func accessLogSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readAccessLog returns the entries written at or after offset from.
func readAccessLog(path string, from int64) ([]accessEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, err
	}
	var out []accessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var e accessEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Decision != "" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// waitAccess waits for an entry written at or after from that matches.
func waitAccess(ctx context.Context, path string, from int64, timeout time.Duration, match func(accessEntry) bool) (accessEntry, error) {
	deadline := time.Now().Add(timeout)
	for {
		entries, _ := readAccessLog(path, from)
		for _, e := range entries {
			if match(e) {
				return e, nil
			}
		}
		if time.Now().After(deadline) {
			return accessEntry{}, fmt.Errorf("no matching entry in %s within %s", path, timeout)
		}
		select {
		case <-ctx.Done():
			return accessEntry{}, context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metricSum adds up the samples of metric name, in Prometheus text
// format, whose labels include every pair of want. ok is false when no
// sample matched.
func metricSum(text, name string, want map[string]string) (sum float64, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		labels := map[string]string{}
		switch {
		case strings.HasPrefix(rest, "{"):
			end, parsed := parseLabels(rest[1:], labels)
			if !parsed {
				continue
			}
			rest = rest[1+end:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer name
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		match := true
		for k, w := range want {
			match = match && labels[k] == w
		}
		if match {
			sum, ok = sum+v, true
		}
	}
	return sum, ok
}

// parseLabels reads `k="v",...}` into labels and returns the index just
// past the closing brace.
func parseLabels(s string, labels map[string]string) (int, bool) {
	i := 0
	for i < len(s) {
		if s[i] == '}' {
			return i + 1, true
		}
		if s[i] == ',' {
			i++
			continue
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 || i+eq+1 >= len(s) || s[i+eq+1] != '"' {
			return 0, false
		}
		key := s[i : i+eq]
		i += eq + 2
		var v strings.Builder
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[i])
				}
				continue
			}
			v.WriteByte(s[i])
		}
		if i >= len(s) {
			return 0, false
		}
		labels[key] = v.String()
		i++ // the closing quote
	}
	return 0, false
}

// metric reads one sum from a component's /metrics.
func metric(admin, name string, want map[string]string) (float64, error) {
	text, err := httpOK("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	v, _ := metricSum(text, name, want)
	return v, nil
}

// sidecarIdentity is a sidecar's GET /debug/identity.
type sidecarIdentity struct {
	SPIFFEID       string    `json:"spiffe_id"`
	Serial         string    `json:"serial"`
	NotBefore      time.Time `json:"not_before"`
	NotAfter       time.Time `json:"not_after"`
	BundleSequence uint64    `json:"bundle_sequence"`
	Roots          []string  `json:"roots_sha256"`
}

func debugIdentity(admin string) (sidecarIdentity, error) {
	var id sidecarIdentity
	body, err := httpOK("http://" + admin + "/debug/identity")
	if err != nil {
		return id, err
	}
	if err := json.Unmarshal([]byte(body), &id); err != nil {
		return id, fmt.Errorf("GET http://%s/debug/identity: %w", admin, err)
	}
	return id, nil
}

// short abbreviates a fingerprint or serial for the story.
func short(s string) string {
	if len(s) > 12 {
		return s[:12] + "…"
	}
	return s
}

// until says how far t is from now, as the story tells it.
func until(t time.Time) string {
	d := time.Until(t).Round(time.Second)
	if d < 0 {
		return "expired " + (-d).String() + " ago"
	}
	return "in " + d.String()
}
