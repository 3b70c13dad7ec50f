package inject

import (
	"encoding/json"
	"strings"
)

// Op is one JSONPatch (RFC 6902) operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Patch is a JSONPatch: only the operations the injection needs, so other
// fields of the pod (and what other webhooks changed) are left alone.
type Patch []Op

func (p *Patch) add(path string, v any)     { *p = append(*p, Op{Op: "add", Path: path, Value: v}) }
func (p *Patch) replace(path string, v any) { *p = append(*p, Op{Op: "replace", Path: path, Value: v}) }

// Empty reports whether the patch changes nothing.
func (p Patch) Empty() bool { return len(p) == 0 }

// JSON encodes the patch.
func (p Patch) JSON() ([]byte, error) { return json.Marshal(p) }

// addAll appends items to the array at path: one operation that sets the
// whole array when the pod has none (absent: missing, null or empty, which
// the API server's encoding may omit; "add" replaces a member that
// exists), else one "-" append per item.
func addAll[T any](p *Patch, path string, absent bool, items []T) {
	if absent {
		p.add(path, items)
		return
	}
	for _, it := range items {
		p.add(path+"/-", it)
	}
}

// escapePointer escapes a JSON Pointer reference token (RFC 6901).
func escapePointer(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}
