package cliflag

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		positional int
		wantErr    error // nil: no error
		says       string
	}{
		{"ok", []string{"--n", "3"}, 0, nil, ""},
		{"positional ok", []string{"--n", "3", "x"}, 1, nil, ""},
		{"unknown flag", []string{"--nn", "3"}, 0, ErrUsage, "flag provided but not defined: -nn"},
		{"bad value", []string{"--n", "three"}, 0, ErrUsage, `invalid value "three" for flag -n`},
		{"extra argument", []string{"x"}, 0, ErrUsage, `tether test takes 0 argument(s), got ["x"]`},
		{"missing argument", nil, 1, ErrUsage, "tether test takes 1 argument(s)"},
		{"help", []string{"-h"}, 0, flag.ErrHelp, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			fs := New("test", &stderr)
			fs.Int("n", 0, "a number")
			err := Parse(fs, tc.args, tc.positional)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Parse(%q) = %v, want nil", tc.args, err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("Parse(%q) = %v, want %v", tc.args, err, tc.wantErr)
			}
			if tc.says != "" && !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %q does not say %q", err, tc.says)
			}
			if tc.wantErr == flag.ErrHelp && !strings.Contains(stderr.String(), "a number") {
				t.Errorf("-h did not print the flags to stderr: %q", stderr.String())
			}
		})
	}
}
