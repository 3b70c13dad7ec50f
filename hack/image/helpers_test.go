package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// repoRoot is the module root, two directories up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// fixtureModule writes a small module with the given main packages (each
// prints its name), for presets whose real packages take long to build or
// do not exist yet.
func fixtureModule(t *testing.T, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "go.mod"), "module example.com/fixture\n\ngo 1.26\n")
	for _, p := range pkgs {
		write(t, filepath.Join(dir, p, "main.go"), "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\""+p+"\") }\n")
	}
	return dir
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// build runs `build` with args and returns its output.
func build(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), append([]string{"build"}, args...), &out); err != nil {
		t.Fatalf("build %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

// buildErr runs `build` with args, which must fail, and returns the error.
func buildErr(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"build"}, args...), &out)
	if err == nil {
		t.Fatalf("build %v succeeded, want an error\n%s", args, out.String())
	}
	return err.Error()
}

// readImage reads the one image of a docker-archive tarball.
func readImage(t *testing.T, path string) v1.Image {
	t.Helper()
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return img
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func configOf(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// file is one entry of an image's flattened file system.
type file struct {
	hdr  *tar.Header
	data []byte
}

// files flattens img's layers, by absolute path.
func files(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]file{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out["/"+strings.TrimSuffix(h.Name, "/")] = file{h, b}
	}
}

// checkOwners fails unless every entry is owned by 0:0 with no names and has
// the image's one timestamp.
func checkOwners(t *testing.T, fs map[string]file) {
	t.Helper()
	for p, f := range fs {
		if f.hdr.Uid != 0 || f.hdr.Gid != 0 || f.hdr.Uname != "" || f.hdr.Gname != "" {
			t.Errorf("%s owned by %d:%d (%q:%q), want 0:0", p, f.hdr.Uid, f.hdr.Gid, f.hdr.Uname, f.hdr.Gname)
		}
		if f.hdr.ModTime.Unix() != 0 {
			t.Errorf("%s has time %v, want 1970-01-01", p, f.hdr.ModTime)
		}
	}
}

// checkFile fails unless fs has a regular file at p with mode.
func checkFile(t *testing.T, fs map[string]file, p string, mode int64) {
	t.Helper()
	f, ok := fs[p]
	switch {
	case !ok:
		t.Errorf("%s missing", p)
	case f.hdr.Typeflag != tar.TypeReg:
		t.Errorf("%s: type %q, want a regular file", p, f.hdr.Typeflag)
	case f.hdr.Mode != mode:
		t.Errorf("%s: mode %o, want %o", p, f.hdr.Mode, mode)
	}
}

var timeZero = time.Unix(0, 0).UTC()

// tarballManifest reads the manifest.json of a docker-archive tarball.
func tarballManifest(path string) (tarball.Manifest, error) {
	return tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
}
