package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// normalizeTag parses s as docker does: "tether" is
// docker.io/library/tether:latest.
func normalizeTag(s string) (name.Tag, error) {
	t, err := name.NewTag(s)
	if err != nil {
		return name.Tag{}, fmt.Errorf("tag %q: %w", s, err)
	}
	reg := t.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return name.NewTag(reg + "/" + t.RepositoryStr() + ":" + t.TagStr())
}

// writeOutputs writes the tarball, the OCI layout and pushes, as o asks.
func writeOutputs(ctx context.Context, img v1.Image, o buildOptions, stdout io.Writer) error {
	tag, err := normalizeTag(o.tag)
	if err != nil {
		return err
	}
	tags := []name.Tag{tag}
	for _, s := range o.alsoTags {
		t, err := normalizeTag(s)
		if err != nil {
			return err
		}
		tags = append(tags, t)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	if err := writeTarball(o.out, tags, img); err != nil {
		return err
	}
	names := make([]string, len(tags))
	for i, t := range tags {
		names[i] = t.String()
	}
	fmt.Fprintf(stdout, "wrote %s: %s %s\n", o.out, strings.Join(names, " "), digest)
	if o.ociLayout != "" {
		p, err := layout.Write(o.ociLayout, empty.Index)
		if err != nil {
			return fmt.Errorf("OCI layout %s: %w", o.ociLayout, err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag.String()})); err != nil {
			return fmt.Errorf("OCI layout %s: %w", o.ociLayout, err)
		}
		fmt.Fprintf(stdout, "wrote OCI layout %s\n", o.ociLayout)
	}
	if o.push != "" {
		if err := push(ctx, img, o.push, o.insecure); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pushed %s@%s\n", o.push, digest)
	}
	return nil
}

// writeTarball writes a docker-archive tarball (docker load, kind load
// image-archive, ctr images import) of img under every tag to path,
// replacing it only when complete.
func writeTarball(path string, tags []name.Tag, img v1.Image) error {
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		refs[t] = img
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".image-*.tar")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// push writes img to the registry at ref. Plain HTTP is allowed for
// loopback registries only.
func push(ctx context.Context, img v1.Image, ref string, insecure bool) error {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return fmt.Errorf("--push %q: %w", ref, err)
	}
	if insecure && !isLoopback(r.Context().RegistryStr()) {
		return fmt.Errorf("--insecure: %s is not a loopback registry; plain HTTP is allowed on loopback only", r.Context().RegistryStr())
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("pushing to %s: %w", ref, err)
	}
	return nil
}

// isLoopback reports whether hostport names localhost or a loopback address.
func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
