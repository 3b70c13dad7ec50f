package main

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debRootfs extracts the iptables packages from the repository's cache.
func debRootfs(t *testing.T) rootfs {
	t.Helper()
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs Debian's %s: %v", tool, err)
		}
	}
	debs, err := fetchDebs(filepath.Join(repoRoot(t), ".cache", "image", "debs"), iptablesDebs)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := extract(debs)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestClosure(t *testing.T) {
	fs := debRootfs(t)
	dirs := libDirs("x86_64-linux-gnu")
	got, err := fs.closure([]string{"/usr/sbin/xtables-nft-multi"}, dirs)
	if err != nil {
		t.Fatal(err)
	}
	// What ldd shows for xtables-nft-multi, with the symlinks to each file.
	for _, want := range []string{"libxtables.so.12", "libmnl.so.0", "libnftnl.so.11", "libc.so.6", "ld-linux-x86-64.so.2"} {
		if !containsSuffix(got, "/"+want) {
			t.Errorf("closure lacks %s: %q", want, got)
		}
	}
	if !containsSuffix(got, "/lib64/ld-linux-x86-64.so.2") {
		t.Errorf("closure lacks the program interpreter /lib64/ld-linux-x86-64.so.2: %q", got)
	}
	for _, notWanted := range []string{"libip4tc.so.2", "libnetfilter_conntrack.so.3"} {
		if containsSuffix(got, "/"+notWanted) {
			t.Errorf("closure of the nft binary has %s, which only legacy/extensions need", notWanted)
		}
	}

	// A library missing from the packages fails, naming who needs it.
	for p := range fs {
		if strings.Contains(p, "libmnl.so") {
			delete(fs, p)
		}
	}
	_, err = fs.closure([]string{"/usr/sbin/xtables-nft-multi"}, dirs)
	if err == nil || !strings.Contains(err.Error(), "needs libmnl.so.0") {
		t.Errorf("closure without libmnl: error %v", err)
	}
	// Not an ELF file.
	if _, err := fs.closure([]string{"/usr/share/doc/iptables/copyright"}, dirs); err == nil || !strings.Contains(err.Error(), "not an ELF file") {
		t.Errorf("closure of a text file: error %v", err)
	}
	// A path outside the packages.
	if _, err := fs.closure([]string{"/usr/sbin/nft"}, dirs); err == nil || !strings.Contains(err.Error(), "not in the packages") {
		t.Errorf("closure of a missing file: error %v", err)
	}
}

func TestResolveLoop(t *testing.T) {
	fs := rootfs{
		"/a": {entry: entry{typ: tar.TypeSymlink, link: "b"}},
		"/b": {entry: entry{typ: tar.TypeSymlink, link: "/a"}},
	}
	if _, err := fs.resolve("/a"); err == nil || !strings.Contains(err.Error(), "too many symlinks") {
		t.Errorf("symlink loop: error %v", err)
	}
}

func TestFetchDebsUnknownPackage(t *testing.T) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		t.Skipf("needs apt-cache: %v", err)
	}
	_, err := fetchDebs(t.TempDir(), []string{"no-such-package-tether"})
	if err == nil || !strings.Contains(err.Error(), "no-such-package-tether") {
		t.Errorf("unknown package: error %v", err)
	}
}

func containsSuffix(s []string, suffix string) bool {
	for _, x := range s {
		if strings.HasSuffix(x, suffix) {
			return true
		}
	}
	return false
}

func TestCorruptCachedDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skipf("needs dpkg-deb: %v", err)
	}
	if _, err := exec.LookPath("apt-cache"); err != nil {
		t.Skipf("needs apt-cache: %v", err)
	}
	dir := t.TempDir()
	ds, err := candidates([]string{"libmnl0"})
	if err != nil {
		t.Fatal(err)
	}
	d := ds[0]
	name := filepath.Join(dir, "libmnl0_"+strings.ReplaceAll(d.version, ":", "%3a")+"_"+d.arch+".deb")
	if err := os.WriteFile(name, []byte("truncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	debs, err := fetchDebs(dir, []string{"libmnl0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := extract(debs); err == nil || !strings.Contains(err.Error(), "delete it to download it again") {
		t.Errorf("corrupt .deb: error %v", err)
	}
}
