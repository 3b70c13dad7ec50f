package identity

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// ReadJoinTokenFile reads a join token from path, or from stdin when path
// is "-", so that it need not be on a command line, where every local user
// reads it in /proc/PID/cmdline. Surrounding white space is ignored; the
// content must be one join token.
func ReadJoinTokenFile(path string, stdin io.Reader) (string, error) {
	var r io.Reader
	name := path
	if path == "-" {
		if stdin == nil {
			stdin = os.Stdin
		}
		r, name = stdin, "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("join token file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, 4<<10))
	if err != nil {
		return "", fmt.Errorf("join token file %s: %w", name, err)
	}
	tok := strings.TrimSpace(string(b))
	if err := ParseJoinToken(tok); err != nil {
		return "", fmt.Errorf("join token file %s: %w", name, err)
	}
	return tok, nil
}
