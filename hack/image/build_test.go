package main

import (
	"archive/tar"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestBuildPause(t *testing.T) {
	dir := t.TempDir()
	out := build(t, "pause", "--src", repoRoot(t), "--out", filepath.Join(dir, "a.tar"), "--oci-layout", filepath.Join(dir, "oci"))
	if !strings.Contains(out, "registry.k8s.io/pause:3.10") {
		t.Errorf("output does not name the tag:\n%s", out)
	}
	img := readImage(t, filepath.Join(dir, "a.tar"))
	cfg := configOf(t, img)
	if cfg.Config.User != "65535:65535" || !slices.Equal(cfg.Config.Entrypoint, []string{"/pause"}) || cfg.OS != "linux" {
		t.Errorf("config: user %q entrypoint %q os %q", cfg.Config.User, cfg.Config.Entrypoint, cfg.OS)
	}
	fs := files(t, img)
	checkOwners(t, fs)
	checkFile(t, fs, "/pause", 0o755)
	if err := checkStatic(fs["/pause"].data); err != nil {
		t.Errorf("/pause: %v", err)
	}

	// Built again: the same digest, in the tarball and in the OCI layout.
	build(t, "pause", "--src", repoRoot(t), "--out", filepath.Join(dir, "b.tar"))
	d := digest(t, img)
	if d2 := digest(t, readImage(t, filepath.Join(dir, "b.tar"))); d2 != d {
		t.Errorf("second build: digest %s, first %s", d2, d)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Digest != d || m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "registry.k8s.io/pause:3.10" {
		t.Errorf("OCI layout index: %+v, want one manifest %s", m.Manifests, d)
	}
}

func TestBuildSample(t *testing.T) {
	src := fixtureModule(t, "test/cluster/sampleapp")
	out := filepath.Join(t.TempDir(), "sample.tar")
	build(t, "tether-sample", "--src", src, "--out", out)
	tags := repoTags(t, out)
	if !slices.Equal(tags, []string{"docker.io/library/tether-sample:latest"}) {
		t.Errorf("tags %q, want docker.io/library/tether-sample:latest", tags)
	}
	img := readImage(t, out)
	cfg := configOf(t, img)
	if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/tether-sample"}) {
		t.Errorf("config: user %q entrypoint %q", cfg.Config.User, cfg.Config.Entrypoint)
	}
	if cfg.Config.Labels["org.opencontainers.image.title"] != "tether-sample" {
		t.Errorf("labels %v", cfg.Config.Labels)
	}
	if !slices.Contains(cfg.Config.Env, pathEnv) {
		t.Errorf("env %q lacks %s", cfg.Config.Env, pathEnv)
	}
	fs := files(t, img)
	checkOwners(t, fs)
	checkFile(t, fs, "/usr/local/bin/tether-sample", 0o755)
	checkFile(t, fs, "/etc/passwd", 0o644)
	if !strings.Contains(string(fs["/etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd:\n%s", fs["/etc/passwd"].data)
	}
	if tmp := fs["/tmp"]; tmp.hdr == nil || tmp.hdr.Typeflag != tar.TypeDir || tmp.hdr.Mode != 0o1777 {
		t.Errorf("/tmp: %+v, want a directory 1777", tmp.hdr)
	}
	if _, ok := fs["/usr/sbin/iptables"]; ok {
		t.Error("the sample image has iptables")
	}
}

func TestBuildSampleMissing(t *testing.T) {
	src := fixtureModule(t) // no test/cluster/sampleapp
	err := buildErr(t, "tether-sample", "--src", src, "--out", filepath.Join(t.TempDir(), "x.tar"))
	if !strings.Contains(err, "package ./test/cluster/sampleapp not found") {
		t.Errorf("error %q does not say the package is missing", err)
	}
}

func TestBuildTagNormalized(t *testing.T) {
	src := fixtureModule(t, "test/cluster/sampleapp")
	for tag, want := range map[string]string{
		"sample":                 "docker.io/library/sample:latest",
		"me/sample:v1":           "docker.io/me/sample:v1",
		"127.0.0.1:5000/x/y:z":   "127.0.0.1:5000/x/y:z",
		"index.docker.io/a/b:c":  "docker.io/a/b:c",
		"registry.k8s.io/p:3.10": "registry.k8s.io/p:3.10",
	} {
		out := filepath.Join(t.TempDir(), "x.tar")
		build(t, "tether-sample", "--src", src, "--out", out, "--tag", tag)
		if got := repoTags(t, out); !slices.Equal(got, []string{want}) {
			t.Errorf("--tag %s: tarball tags %q, want %s", tag, got, want)
		}
	}
}

func TestBuildBadInput(t *testing.T) {
	src := fixtureModule(t, "test/cluster/sampleapp")
	out := filepath.Join(t.TempDir(), "x.tar")
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"errors":[{"code":"DENIED","message":"no pushes here"}]}`, http.StatusForbidden)
	}))
	defer refuse.Close()
	refuseHost := strings.TrimPrefix(refuse.URL, "http://")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"busybox"}, `unknown image "busybox"`},
		{nil, "no image name"},
		{[]string{"pause", "extra"}, "unexpected arguments"},
		{[]string{"--bogus", "pause"}, "flag provided but not defined"},
		{[]string{"tether-sample", "--src", src, "--out", "/nonexistent/dir/x.tar"}, "directory /nonexistent/dir does not exist"},
		{[]string{"tether-sample", "--src", src, "--out", out, "--insecure"}, "--insecure without --push"},
		{[]string{"tether-sample", "--src", src, "--out", out, "--tag", "Bad Tag"}, `tag "Bad Tag"`},
		{[]string{"tether-sample", "--src", src, "--out", out, "--tag", "x@sha256:" + strings.Repeat("0", 64)}, "tag"},
		{[]string{"tether-sample", "--src", src, "--out", out, "--push", refuseHost + "/x:y"}, "pushing to " + refuseHost},
		{[]string{"tether-sample", "--src", src, "--out", out, "--push", "registry.example:5000/x:y", "--insecure"}, "not a loopback registry"},
		{[]string{"tether-sample", "--src", src, "--out", out, "--push", "::bad::"}, "--push"},
	} {
		if got := buildErr(t, c.args...); !strings.Contains(got, c.want) {
			t.Errorf("build %q: error %q, want it to contain %q", c.args, got, c.want)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if got := buildErr(t, "tether-sample", "--src", src, "--out", out); !strings.Contains(got, "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: error %q", got)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	src := fixtureModule(t, "test/cluster/sampleapp")
	out := filepath.Join(t.TempDir(), "x.tar")
	t.Setenv("SOURCE_DATE_EPOCH", "1764892800")
	build(t, "tether-sample", "--src", src, "--out", out)
	img := readImage(t, out)
	if c := configOf(t, img).Created.Unix(); c != 1764892800 {
		t.Errorf("created %d, want 1764892800", c)
	}
	for p, f := range files(t, img) {
		if f.hdr.ModTime.Unix() != 1764892800 {
			t.Errorf("%s: time %v", p, f.hdr.ModTime)
		}
	}
}

func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	src := fixtureModule(t, "test/cluster/sampleapp")
	out := filepath.Join(t.TempDir(), "x.tar")
	build(t, "tether-sample", "--src", src, "--out", out, "--push", host+"/mesh/sample:v1", "--insecure")
	ref, err := name.ParseReference(host+"/mesh/sample:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pulling what was pushed: %v", err)
	}
	if p, b := digest(t, pulled), digest(t, readImage(t, out)); p != b {
		t.Errorf("pulled %s, built %s", p, b)
	}
}

func TestLayerTar(t *testing.T) {
	tr := tree{}
	tr.file("/b/c", 0o600, []byte("x"))
	tr.symlink("/a", "b/c")
	b, err := tr.tar(timeZero)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	r := tar.NewReader(strings.NewReader(string(b)))
	for {
		h, err := r.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	if want := []string{"a", "b/", "b/c"}; !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
	tr.file("/a/d", 0o644, nil) // /a is a symlink
	if _, err := tr.tar(timeZero); err == nil || !strings.Contains(err.Error(), "/a is not a directory") {
		t.Errorf("file under a symlink: error %v", err)
	}
}

// repoTags returns the RepoTags of a docker-archive tarball.
func repoTags(t *testing.T, path string) []string {
	t.Helper()
	m, err := tarballManifest(path)
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, d := range m {
		tags = append(tags, d.RepoTags...)
	}
	return tags
}
