package main

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/version"
)

// imageTarEnv names the tarball TestTetherImage checks: the one `make image`
// wrote (.cache/image/tether.tar).
const imageTarEnv = "TETHER_IMAGE_TAR"

// TestTetherImage checks the real tether image `make image` built: its
// config and files; that building it again gives the same digest; and, as
// root, runs its iptables and binaries in a chroot and imports it into a
// private containerd. Building the image compiles every binary a second
// time, with other flags than the race-enabled test build, so make test
// does not: the test runs in make cluster-test (as root, after the node is
// down), which builds the image anyway, and make image-test runs it by hand.
func TestTetherImage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: checking the tether image rebuilds it (a minute warm)")
	}
	out := builtImage(t)
	dir := t.TempDir()
	img := readImage(t, out)

	t.Run("config", func(t *testing.T) {
		cfg := configOf(t, img)
		if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/tether"}) {
			t.Errorf("user %q entrypoint %q", cfg.Config.User, cfg.Config.Entrypoint)
		}
		if l := cfg.Config.Labels["dev.tether.iptables-packages"]; !strings.Contains(l, "iptables 1.8") || !strings.Contains(l, "libc6 ") {
			t.Errorf("label dev.tether.iptables-packages = %q", l)
		}
		// Tagged also with the version tether install defaults to.
		got := repoTags(t, out)
		slices.Sort(got)
		if want := []string{"docker.io/library/tether:" + version.Version, "docker.io/library/tether:latest"}; !slices.Equal(got, want) {
			t.Errorf("tags %q", got)
		}
	})
	fs := files(t, img)
	t.Run("files", func(t *testing.T) {
		checkOwners(t, fs)
		for _, b := range presets["tether"].binaries {
			checkFile(t, fs, "/usr/local/bin/"+b.name, 0o755)
		}
		checkFile(t, fs, "/usr/sbin/xtables-nft-multi", 0o755)
		checkFile(t, fs, "/usr/sbin/xtables-legacy-multi", 0o755)
		checkFile(t, fs, packagesFile, 0o644)
		for name, target := range iptablesNames {
			if f := fs["/usr/sbin/"+name]; f.hdr == nil || f.hdr.Typeflag != tar.TypeSymlink || f.hdr.Linkname != target {
				t.Errorf("/usr/sbin/%s: want a symlink to %s", name, target)
			}
		}
		for _, p := range []string{"/usr/lib/x86_64-linux-gnu/xtables/libxt_REDIRECT.so", "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"} {
			if _, ok := fs[p]; !ok {
				t.Errorf("%s missing", p)
			}
		}
		// Nothing of the packages beyond what iptables runs with.
		for _, p := range []string{"/bin/sh", "/usr/bin/apt", "/usr/sbin/iptables-apply", "/usr/share/doc", "/usr/lib/x86_64-linux-gnu/gconv", "/sbin/ldconfig"} {
			if _, ok := fs[p]; ok {
				t.Errorf("%s is in the image", p)
			}
		}
	})
	t.Run("reproducible", func(t *testing.T) {
		for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("the iptables layer needs Debian's %s: %v", tool, err)
			}
		}
		start := time.Now()
		out2 := filepath.Join(dir, "again.tar")
		build(t, "tether", "--src", repoRoot(t), "--out", out2)
		t.Logf("built again in %v", time.Since(start))
		if a, b := digest(t, img), digest(t, readImage(t, out2)); a != b {
			t.Errorf("digests differ: %s in %s, %s built now from the same sources (not reproducible, or %s predates a change: run make image again)", a, out, b, out)
		}
	})
	t.Run("chroot", func(t *testing.T) {
		requireRoot(t)
		root := filepath.Join(dir, "rootfs")
		extractTo(t, fs, root)
		chrootRuns(t, root)
	})
	t.Run("containerd", func(t *testing.T) {
		requireRoot(t)
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		ctr := privateContainerd(t)
		importIntoContainerd(t, ctr, out, cfg.String())

		// Pulled through `serve` as the cluster's containerd does: the
		// registry is its mirror for docker.io and registry.k8s.io.
		pauseTar := filepath.Join(dir, "pause.tar")
		build(t, "pause", "--src", repoRoot(t), "--out", pauseTar)
		addr := serve(t, out, pauseTar)
		hosts := filepath.Join(dir, "hosts")
		for _, reg := range []string{"docker.io", "registry.k8s.io"} {
			write(t, filepath.Join(hosts, reg, "hosts.toml"), fmt.Sprintf("[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+addr))
		}
		for ref, img := range map[string]string{"docker.io/library/tether:latest": out, "registry.k8s.io/pause:3.10": pauseTar} {
			if o, err := ctr("images", "rm", ref); err != nil && !strings.Contains(o, "not found") {
				t.Fatalf("ctr images rm %s: %v\n%s", ref, err, o)
			}
			if o, err := ctr("images", "pull", "--hosts-dir", hosts, ref); err != nil {
				t.Fatalf("ctr images pull %s through the mirror: %v\n%s", ref, err, o)
			}
			if got, want := listedDigest(t, ctr, ref), digest(t, readImage(t, img)).String(); got != want {
				t.Errorf("pulled %s: digest %s, built %s", ref, got, want)
			}
		}
	})
}

// builtImage returns the tarball $TETHER_IMAGE_TAR names, and skips the
// test, saying where it runs, when the variable is not set.
func builtImage(t *testing.T) string {
	t.Helper()
	p, err := imageTarPath(repoRoot(t), os.Getenv(imageTarEnv))
	if err != nil {
		t.Fatal(err)
	}
	if p == "" {
		t.Skipf("%s is not set: this test checks the image make image built, so it runs in make cluster-test "+
			"(CI's second stage, as root, after the node is down) and not in make test; "+
			"by hand (as root for the chroot and containerd subtests): make image-test, or "+
			"make image && %s=.cache/image/tether.tar go test -count=1 -v -run TestTetherImage ./hack/image",
			imageTarEnv, imageTarEnv)
	}
	return p
}

// imageTarPath resolves the value of $TETHER_IMAGE_TAR: "" when unset, a
// relative path from the module root (go test runs in the package's
// directory), and an error when no such file exists.
func imageTarPath(root, v string) (string, error) {
	if v == "" {
		return "", nil
	}
	p := v
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("%s=%s: %w; make image writes .cache/image/tether.tar", imageTarEnv, v, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s=%s: %s is not a file; make image writes .cache/image/tether.tar", imageTarEnv, v, p)
	}
	return p, nil
}

// TestImageTarPath: where TestTetherImage finds the image, and that a
// wrong path fails instead of skipping.
func TestImageTarPath(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, ".cache/image/tether.tar"), "x")
	for _, c := range []struct{ v, want, err string }{
		{"", "", ""},
		{".cache/image/tether.tar", filepath.Join(root, ".cache/image/tether.tar"), ""},
		{filepath.Join(root, ".cache/image/tether.tar"), filepath.Join(root, ".cache/image/tether.tar"), ""},
		{"nope.tar", "", "TETHER_IMAGE_TAR=nope.tar: stat " + filepath.Join(root, "nope.tar") + ": no such file or directory; make image writes"},
		{".cache/image", "", "is not a file"},
	} {
		got, err := imageTarPath(root, c.v)
		if got != c.want || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("imageTarPath(%q) = %q, %v; want %q, error containing %q", c.v, got, err, c.want, c.err)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// extractTo writes the files of an image into dir.
func extractTo(t *testing.T, fs map[string]file, dir string) {
	t.Helper()
	paths := make([]string, 0, len(fs))
	for p := range fs {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		f, dst := fs[p], filepath.Join(dir, p)
		var err error
		switch f.hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(dst, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(f.hdr.Linkname, dst)
		case tar.TypeReg:
			err = os.WriteFile(dst, f.data, 0o600)
		}
		if err == nil && f.hdr.Typeflag != tar.TypeSymlink {
			err = os.Chmod(dst, f.hdr.FileInfo().Mode())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// chrootRuns runs the image's iptables and binaries in a chroot of it, in a
// network namespace of their own.
func chrootRuns(t *testing.T, root string) {
	rules := "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" +
		":TETHER_TEST - [0:0]\n-A OUTPUT -p tcp -j TETHER_TEST\n" +
		"-A TETHER_TEST -p tcp -m owner --uid-owner 1337 -j RETURN\n" +
		"-A TETHER_TEST -p tcp --dport 80 -j REDIRECT --to-ports 15001\nCOMMIT\n"
	for _, c := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"/usr/sbin/iptables-save", "--version"}, "", "nf_tables"},
		{[]string{"/usr/sbin/iptables-legacy-save", "--version"}, "", "legacy"},
		{[]string{"/usr/sbin/iptables-restore", "--test"}, rules, ""},
		{[]string{"/usr/sbin/ip6tables-restore", "--test"}, rules, ""},
		{[]string{"/usr/local/bin/tether-sidecar", "-help"}, "", "init"},
		{[]string{"/usr/local/bin/tether", "--help"}, "", "tether"},
	} {
		cmd := exec.Command("unshare", append([]string{"--net", "chroot", root}, c.args...)...)
		cmd.Stdin = strings.NewReader(c.stdin)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("chroot %v: %v, output %q, want %q in it", c.args, err, out, c.want)
		}
	}
	// The rules really load, extensions (owner, REDIRECT) included, and read back.
	script := fmt.Sprintf("chroot %s /usr/sbin/iptables-restore && chroot %s /usr/sbin/iptables-save -t nat", root, root)
	cmd := exec.Command("unshare", "--net", "sh", "-ec", script)
	cmd.Stdin = strings.NewReader(rules)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "-A TETHER_TEST -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001") {
		t.Errorf("iptables-restore then iptables-save in the chroot: %v\n%s", err, out)
	}
}

// ctrFunc runs ctr against one containerd, in namespace k8s.io.
type ctrFunc func(args ...string) (string, error)

// privateContainerd starts a containerd of its own (temporary root, state
// and socket; no CRI) for the test and returns a ctr for it.
func privateContainerd(t *testing.T) ctrFunc {
	for _, tool := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package containerd): %v", tool, err)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	cfg := filepath.Join(dir, "config.toml")
	write(t, cfg, fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc"))
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd := exec.Command("containerd", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(t, cmd) })
	ctr := func(args ...string) (string, error) {
		out, err := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := ctr("version"); err == nil {
			return ctr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd not answering after 30 s:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// importIntoContainerd imports the tarball as docs/install.md says (ctr -n
// k8s.io images import) and finds the image listed, with the built config
// (image ID). containerd writes its own manifest for a docker-archive, so
// the manifest digest is not the built one.
func importIntoContainerd(t *testing.T, ctr ctrFunc, tarPath, wantConfig string) {
	if out, err := ctr("images", "import", tarPath); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	manifest := listedDigest(t, ctr, "docker.io/library/tether:latest")
	raw, err := ctr("content", "get", manifest)
	if err != nil {
		t.Fatalf("ctr content get %s: %v\n%s", manifest, err, raw)
	}
	var m struct {
		Config struct{ Digest string }
	}
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("manifest %s: %v", manifest, err)
	}
	if m.Config.Digest != wantConfig {
		t.Errorf("containerd's image has config %s, built %s", m.Config.Digest, wantConfig)
	}
}

// listedDigest returns the digest `ctr images ls` shows for ref.
func listedDigest(t *testing.T, ctr ctrFunc, ref string) string {
	t.Helper()
	out, err := ctr("images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls does not list %s:\n%s", ref, out)
	return ""
}

// stopProcess stops a process this test started: SIGTERM, then SIGKILL after 10 s.
func stopProcess(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("process %d did not stop on SIGTERM", cmd.Process.Pid)
	}
}
