package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tagged is one image of a tarball under one of its tags.
type tagged struct {
	tag name.Tag
	img v1.Image
}

// runServe serves the images of the tarballs from an in-process registry
// until ctx ends. Each image is in the repository of its tag without the
// registry (docker.io/library/tether:latest is library/tether:latest,
// registry.k8s.io/pause:3.10 is pause:3.10), so a containerd that uses the
// registry as mirror for docker.io and registry.k8s.io finds them. Once
// loaded, the registry is read-only.
func runServe(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "127.0.0.1:5000", "loopback address to listen on")
	ready := fs.String("ready-file", "", "file written once the images are served")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("serve: %w\n%s", err, usage)
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("serve: no image tarballs\n%s", usage)
	}
	if !isLoopback(*addr) {
		return fmt.Errorf("serve: --addr %s: the registry takes no authentication, so it listens on loopback only", *addr)
	}
	var images []tagged
	for _, path := range fs.Args() {
		imgs, err := loadTarball(path)
		if err != nil {
			return err
		}
		images = append(images, imgs...)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	var sealed atomic.Bool
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sealed.Load() && r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "this registry is read-only", http.StatusMethodNotAllowed)
			return
		}
		reg.ServeHTTP(w, r)
	})}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer srv.Close()

	host := ln.Addr().String()
	for _, t := range images {
		ref, err := name.NewTag(host+"/"+t.tag.RepositoryStr()+":"+t.tag.TagStr(), name.Insecure)
		if err != nil {
			return fmt.Errorf("serve: %s: %w", t.tag, err)
		}
		if err := remote.Write(ref, t.img, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("serve: loading %s: %w", t.tag, err)
		}
	}
	sealed.Store(true)
	if *ready != "" {
		if err := writeFileAtomic(*ready, []byte(host+"\n")); err != nil {
			return fmt.Errorf("serve: --ready-file: %w", err)
		}
	}
	fmt.Fprintf(stdout, "serving %d images on %s\n", len(images), host)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("serve: %w", err)
	}
	// A client may hold a connection it has not sent a request on yet,
	// which Shutdown waits for; the registry keeps no state, so closing it
	// loses nothing.
	return nil
}

// loadTarball reads every tagged image of a docker-archive tarball.
func loadTarball(path string) ([]tagged, error) {
	open := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(open)
	if err != nil {
		return nil, fmt.Errorf("serve: %s is not an image tarball: %w", path, err)
	}
	var out []tagged
	for _, d := range m {
		for _, s := range d.RepoTags {
			tag, err := name.NewTag(s)
			if err != nil {
				return nil, fmt.Errorf("serve: %s: tag %q: %w", path, s, err)
			}
			img, err := tarball.Image(open, &tag)
			if err != nil {
				return nil, fmt.Errorf("serve: %s: %s: %w", path, s, err)
			}
			if _, err := img.Digest(); err != nil {
				return nil, fmt.Errorf("serve: %s: %s: %w", path, s, err)
			}
			out = append(out, tagged{tag, img})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("serve: %s holds no tagged image", path)
	}
	return out, nil
}

// writeFileAtomic writes data to path through a temporary file and a rename.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
