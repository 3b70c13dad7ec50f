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

// ResolveJoinTokenFlags settles a command's join token from its flags:
// joinTokenFile (--join-token-file, or its environment variable), when
// given, is read with ReadJoinTokenFile into *joinToken, which must then be
// empty; with neither a join token nor *tokenFile, *tokenFile becomes
// projected when that file exists.
func ResolveJoinTokenFlags(joinToken, tokenFile *string, joinTokenFile, projected string, stdin io.Reader) error {
	if joinTokenFile != "" {
		if *joinToken != "" {
			return fmt.Errorf("give --join-token (or TETHER_JOIN_TOKEN) or --join-token-file, not both")
		}
		tok, err := ReadJoinTokenFile(joinTokenFile, stdin)
		if err != nil {
			return fmt.Errorf("--join-token-file: %w", err)
		}
		*joinToken = tok
	}
	if *joinToken == "" && *tokenFile == "" {
		if _, err := os.Stat(projected); err == nil {
			*tokenFile = projected
		}
	}
	return nil
}
