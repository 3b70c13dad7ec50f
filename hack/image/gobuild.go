package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// goBuild builds the binaries static and trimmed (as the Dockerfile does)
// in one `go build` and returns their contents by name. The caller's
// GOFLAGS are ignored so that they cannot change the result.
func goBuild(ctx context.Context, src string, bins []binary) (map[string][]byte, error) {
	dir, err := os.MkdirTemp("", "tether-image-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)

	args := []string{"build", "-trimpath", "-tags=grpcnotrace", "-ldflags=-s -w", "-o", dir + "/"}
	seen := map[string]bool{}
	for _, b := range bins {
		if st, err := os.Stat(filepath.Join(src, b.pkg)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("package %s not found in %s", b.pkg, src)
		}
		if seen[filepath.Base(b.pkg)] {
			return nil, fmt.Errorf("two packages named %s", filepath.Base(b.pkg))
		}
		seen[filepath.Base(b.pkg)] = true
		args = append(args, b.pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	out := map[string][]byte{}
	for _, b := range bins {
		data, err := os.ReadFile(filepath.Join(dir, filepath.Base(b.pkg)))
		if err != nil {
			return nil, fmt.Errorf("reading the binary of %s: %w", b.pkg, err)
		}
		if err := checkStatic(data); err != nil {
			return nil, fmt.Errorf("%s: %w", b.pkg, err)
		}
		out[b.name] = data
	}
	return out, nil
}

// checkStatic refuses an ELF file that needs a dynamic loader or libraries.
func checkStatic(data []byte) error {
	interp, libs, err := elfNeeds(data)
	if err != nil {
		return err
	}
	if interp != "" || len(libs) > 0 {
		return errors.New("not a static binary (is cgo in use?)")
	}
	return nil
}
