package main

import (
	"archive/tar"
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// serve starts `serve` with args and returns the registry's address once
// ready; the server stops when the test ends.
func serve(t *testing.T, args ...string) string {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, append([]string{"serve", "--addr", "127.0.0.1:0", "--ready-file", ready}, args...), &out)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(ready); err == nil {
			return strings.TrimSpace(string(b))
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("serve not ready after 30 s")
	return ""
}

func TestServe(t *testing.T) {
	dir := t.TempDir()
	src := fixtureModule(t, "test/cluster/sampleapp")
	sample := filepath.Join(dir, "sample.tar")
	build(t, "tether-sample", "--src", src, "--out", sample)
	pause := filepath.Join(dir, "pause.tar")
	build(t, "pause", "--src", repoRoot(t), "--out", pause)

	addr := serve(t, sample, pause)
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/: %s", resp.Status)
	}
	// The repositories a containerd mirror for docker.io and registry.k8s.io asks for.
	for ref, tarPath := range map[string]string{
		addr + "/library/tether-sample:latest": sample,
		addr + "/pause:3.10":                   pause,
	} {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r)
		if err != nil {
			t.Errorf("pulling %s: %v", ref, err)
			continue
		}
		if got, want := digest(t, img), digest(t, readImage(t, tarPath)); got != want {
			t.Errorf("%s: digest %s, built %s", ref, got, want)
		}
	}
	// Read-only once loaded.
	r, _ := name.ParseReference(addr+"/library/tether-sample:latest", name.Insecure)
	if err := remote.Write(r, readImage(t, pause)); err == nil {
		t.Error("a push replaced an image of the read-only registry")
	}
}

func TestServeBadInput(t *testing.T) {
	dir := t.TempDir()
	notImage := filepath.Join(dir, "not-image.tar")
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
	tw.Write([]byte("hi"))
	tw.Close()
	if err := os.WriteFile(notImage, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.tar")
	if err := os.WriteFile(garbage, []byte("not a tar at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	untagged := filepath.Join(dir, "untagged.tar")
	b.Reset()
	tw = tar.NewWriter(&b)
	manifest := []byte(`[{"Config":"c.json","RepoTags":[],"Layers":[]}]`)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(manifest)), Typeflag: tar.TypeReg})
	tw.Write(manifest)
	tw.Close()
	if err := os.WriteFile(untagged, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "no image tarballs"},
		{[]string{filepath.Join(dir, "missing.tar")}, "missing.tar is not an image tarball"},
		{[]string{dir}, "is not an image tarball"},
		{[]string{notImage}, "not-image.tar is not an image tarball"},
		{[]string{garbage}, "garbage.tar is not an image tarball"},
		{[]string{untagged}, "holds no tagged image"},
		{[]string{"--addr", "0.0.0.0:5000", notImage}, "loopback only"},
		{[]string{"--addr", "192.0.2.1:5000", notImage}, "loopback only"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"serve"}, c.args...), &out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %q: error %v, want %q", c.args, err, c.want)
		}
	}
}
