package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// deb is one Debian binary package, downloaded into the cache.
type deb struct {
	pkg, version, arch string
	file               string // path of the .deb
}

// debFile is one file, directory or symlink of an extracted package.
type debFile struct {
	entry
	pkg *deb
}

// rootfs is the union of extracted packages, by absolute path.
type rootfs map[string]debFile

// fetchDebs returns the candidate version (apt's choice, from the host's apt
// lists) of each package in pkgs, downloading with `apt-get download` into
// dir the ones whose .deb is not there yet. A cached .deb is reused as long
// as apt's candidate version stays the same, so builds are reproducible
// until Debian publishes an update and `apt-get update` sees it.
func fetchDebs(dir string, pkgs []string) ([]*deb, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the package cache: %w", err)
	}
	debs, err := candidates(pkgs)
	if err != nil {
		return nil, err
	}
	for _, d := range debs {
		d.file = filepath.Join(dir, fmt.Sprintf("%s_%s_%s.deb", d.pkg, strings.ReplaceAll(d.version, ":", "%3a"), d.arch))
		if _, err := os.Stat(d.file); errors.Is(err, os.ErrNotExist) {
			cmd := exec.Command("apt-get", "download", "-q", d.pkg+"="+d.version)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("apt-get download %s=%s: %w\n%s", d.pkg, d.version, err, out)
			}
		}
		if _, err := os.Stat(d.file); err != nil {
			return nil, fmt.Errorf("package %s: %w", d.pkg, err)
		}
	}
	return debs, nil
}

// candidates asks apt-cache, in one run, for the version apt would install
// of each package.
func candidates(pkgs []string) ([]*deb, error) {
	args := append([]string{"show", "--no-all-versions"}, pkgs...)
	out, err := exec.Command("apt-cache", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("apt-cache show %s: %w: %s (are apt's package lists there? `apt-get update`, which `make deps` runs)",
			strings.Join(pkgs, " "), err, bytes.TrimSpace(out))
	}
	found := map[string]*deb{}
	for _, stanza := range strings.Split(string(out), "\n\n") {
		d := &deb{}
		for _, line := range strings.Split(stanza, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			switch k {
			case "Package":
				d.pkg = v
			case "Version":
				d.version = v
			case "Architecture":
				d.arch = v
			}
		}
		if d.pkg != "" && found[d.pkg] == nil {
			found[d.pkg] = d
		}
	}
	debs := make([]*deb, 0, len(pkgs))
	for _, p := range pkgs {
		d := found[p]
		if d == nil || d.version == "" || d.arch == "" {
			return nil, fmt.Errorf("apt-cache show %s: no Package, Version and Architecture for it", p)
		}
		debs = append(debs, d)
	}
	return debs, nil
}

// extract reads the file systems of debs (dpkg-deb --fsys-tarfile) into one
// rootfs. Hard links become copies.
func extract(debs []*deb) (rootfs, error) {
	fs := rootfs{}
	for _, d := range debs {
		out, err := exec.Command("dpkg-deb", "--fsys-tarfile", d.file).Output()
		if err != nil {
			return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w (delete it to download it again)", d.file, exitDetail(err))
		}
		if err := fs.add(d, tar.NewReader(bytes.NewReader(out))); err != nil {
			return nil, fmt.Errorf("reading %s: %w", d.file, err)
		}
	}
	return fs, nil
}

func (fs rootfs) add(d *deb, tr *tar.Reader) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := clean(h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			fs[p] = debFile{entry{typ: tar.TypeDir, mode: h.Mode & 0o7777}, d}
		case tar.TypeSymlink:
			fs[p] = debFile{entry{typ: tar.TypeSymlink, mode: 0o777, link: h.Linkname}, d}
		case tar.TypeLink:
			target, ok := fs[clean(h.Linkname)]
			if !ok {
				return fmt.Errorf("hard link %s to missing %s", p, h.Linkname)
			}
			fs[p] = debFile{target.entry, d}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			fs[p] = debFile{entry{typ: tar.TypeReg, mode: h.Mode & 0o7777, data: b}, d}
		default:
			return fmt.Errorf("%s: unexpected tar entry type %q", p, h.Typeflag)
		}
	}
}

// resolve follows the symlinks at p (inside fs, never the host) and returns
// every path on the way, the regular file last.
func (fs rootfs) resolve(p string) ([]string, error) {
	var chain []string
	for range 32 {
		f, ok := fs[p]
		if !ok {
			return nil, fmt.Errorf("%s: not in the packages", p)
		}
		chain = append(chain, p)
		if f.typ != tar.TypeSymlink {
			return chain, nil
		}
		if strings.HasPrefix(f.link, "/") {
			p = clean(f.link)
		} else {
			p = clean(filepath.Join(filepath.Dir(p), f.link))
		}
	}
	return nil, fmt.Errorf("%s: too many symlinks", chain[0])
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
