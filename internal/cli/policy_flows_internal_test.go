package cli

import "testing"

// TestCommentSafe: nothing of a table's string ends a comment line of the
// YAML or DOT output (YAML 1.1 breaks lines at NEL, U+2028 and U+2029 too).
func TestCommentSafe(t *testing.T) {
	for in, want := range map[string]string{
		"AccessPolicy shop/api":      "AccessPolicy shop/api",
		"a\nkind: Secret":            "a?kind: Secret",
		"a\r\nb":                     "a??b",
		"a\u0085b\u2028c\u2029d\x7f": "a?b?c?d?",
		"ünïcödé ×3":                 "ünïcödé ×3",
	} {
		if got := commentSafe(in); got != want {
			t.Errorf("commentSafe(%q) = %q, want %q", in, got, want)
		}
	}
}
