package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one directory, regular file or symlink of a layer.
type entry struct {
	typ  byte  // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	mode int64 // permission bits
	data []byte
	link string // symlink target
}

// tree is the content of one layer, by absolute path. Its tar form is
// reproducible: entries sorted by path, one fixed timestamp, owned by root,
// no user or group names, and every parent directory present (0755).
type tree map[string]entry

// file adds a regular file.
func (t tree) file(p string, mode int64, data []byte) {
	t[clean(p)] = entry{typ: tar.TypeReg, mode: mode, data: data}
}

// symlink adds a symbolic link to target.
func (t tree) symlink(p, target string) {
	t[clean(p)] = entry{typ: tar.TypeSymlink, mode: 0o777, link: target}
}

// dir adds a directory.
func (t tree) dir(p string, mode int64) {
	t[clean(p)] = entry{typ: tar.TypeDir, mode: mode}
}

// clean makes p absolute and clean.
func clean(p string) string { return path.Clean("/" + p) }

// size is the sum of the regular files' sizes.
func (t tree) size() int64 {
	var n int64
	for _, e := range t {
		n += int64(len(e.data))
	}
	return n
}

// tar writes t as a tar archive with every timestamp set to mtime.
func (t tree) tar(mtime time.Time) ([]byte, error) {
	all := map[string]entry{}
	for p, e := range t {
		all[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if pe, ok := t[d]; ok && pe.typ != tar.TypeDir {
				return nil, fmt.Errorf("layer path %s is not a directory but holds %s", d, p)
			}
			if _, ok := all[d]; !ok {
				all[d] = entry{typ: tar.TypeDir, mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		h := &tar.Header{Typeflag: e.typ, Name: strings.TrimPrefix(p, "/"), Mode: e.mode, ModTime: mtime}
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = e.link
		case tar.TypeReg:
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing %s: %w", p, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("writing %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// layer makes a gzip layer (best compression) of t.
func (t tree) layer(mtime time.Time) (v1.Layer, error) {
	b, err := t.tar(mtime)
	if err != nil {
		return nil, err
	}
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return tarball.LayerFromOpener(open, tarball.WithCompressionLevel(9), tarball.WithCompressedCaching)
}
