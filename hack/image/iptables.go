package main

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
)

// iptablesDebs are the Debian packages the iptables layer is assembled from:
// iptables and the packages of the libraries its binaries and extensions
// link. Which of their files go into the layer is decided by the ELF
// closure, not by this list; a library missing here fails the build.
var iptablesDebs = []string{
	"iptables", "libip4tc2", "libip6tc2", "libxtables12", "libnftnl11", "libmnl0",
	"libnetfilter-conntrack3", "libnfnetlink0", "libc6",
}

// iptablesNames are the command names in /usr/sbin, all served by one of the
// two multi-call binaries. The plain names point at the nft backend, as
// Debian's alternatives do by default.
var iptablesNames = map[string]string{}

func init() {
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			iptablesNames[fam+suffix] = "xtables-nft-multi"
			iptablesNames[fam+"-nft"+suffix] = "xtables-nft-multi"
			iptablesNames[fam+"-legacy"+suffix] = "xtables-legacy-multi"
		}
	}
}

// packagesFile is where the image records the Debian packages its iptables layer came from.
const packagesFile = "/usr/share/tether/iptables-packages.txt"

// multiarch returns Debian's multiarch triplet for a Go architecture.
func multiarch(goarch string) (string, error) {
	switch goarch {
	case "amd64":
		return "x86_64-linux-gnu", nil
	case "arm64":
		return "aarch64-linux-gnu", nil
	}
	return "", fmt.Errorf("no Debian multiarch triplet known for GOARCH %s", goarch)
}

// iptablesLayer builds the iptables layer from the packages cached in
// debDir: xtables-nft-multi and xtables-legacy-multi, the command names of
// iptablesNames, every xtables extension, and the shared libraries and
// dynamic loader they need (closure). It returns the layer's tree and the
// packages it took files from, as "name version" lines.
func iptablesLayer(debDir string) (tree, []string, error) {
	triplet, err := multiarch(runtime.GOARCH)
	if err != nil {
		return nil, nil, err
	}
	debs, err := fetchDebs(debDir, iptablesDebs)
	if err != nil {
		return nil, nil, err
	}
	fs, err := extract(debs)
	if err != nil {
		return nil, nil, err
	}
	start := []string{"/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"}
	extDir := "/usr/lib/" + triplet + "/xtables/"
	for p := range fs {
		if strings.HasPrefix(p, extDir) && strings.HasSuffix(p, ".so") {
			start = append(start, p)
		}
	}
	if len(start) == 2 {
		return nil, nil, fmt.Errorf("no xtables extensions in %s of the iptables package", extDir)
	}
	paths, err := fs.closure(start, libDirs(triplet))
	if err != nil {
		return nil, nil, err
	}
	t := tree{}
	used := map[string]string{}
	for _, p := range paths {
		f := fs[p]
		t[p] = f.entry
		used[f.pkg.pkg] = f.pkg.version
	}
	for name, target := range iptablesNames {
		t.symlink("/usr/sbin/"+name, target)
	}
	// iptables-legacy takes its lock in /run; the nft backend needs none.
	t.dir("/run", 0o755)
	var pkgs []string
	for p, v := range used {
		pkgs = append(pkgs, p+" "+v)
	}
	sort.Strings(pkgs)
	t.file(packagesFile, 0o644, []byte(strings.Join(pkgs, "\n")+"\n"))
	return t, pkgs, nil
}
