package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tether-mesh/tether/internal/version"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// buildOptions are the flags of `build`.
type buildOptions struct {
	src       string // module root
	out       string // docker-archive tarball
	ociLayout string // OCI layout directory, or ""
	tag       string
	alsoTags  []string // more names of the image in the tarball
	push      string   // reference to push to, or ""
	insecure  bool
	debDir    string
	epoch     time.Time
}

// pathEnv is the PATH of the images, Debian's default (as in the Dockerfile's image).
const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func runBuild(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o buildOptions
	fs.StringVar(&o.out, "out", "", "docker-archive tarball to write (default SRC/.cache/image/NAME.tar)")
	fs.StringVar(&o.ociLayout, "oci-layout", "", "also write an OCI image layout into this directory")
	fs.StringVar(&o.tag, "tag", "", "the image's name (default: the preset's, NAME:latest, and for tether also tether:VERSION, the tag tether install defaults to)")
	fs.StringVar(&o.push, "push", "", "push the image to this reference")
	fs.BoolVar(&o.insecure, "insecure", false, "push over plain HTTP (loopback registries only)")
	fs.StringVar(&o.src, "src", "", "module root (default: the current module's)")
	fs.StringVar(&o.debDir, "deb-cache", "", "cache of Debian packages (default SRC/.cache/image/debs)")
	name, err := parseWithArg(fs, args)
	if err != nil {
		return fmt.Errorf("build: %w\n%s", err, usage)
	}
	p, err := lookupPreset(name)
	if err != nil {
		return err
	}
	if err := o.defaults(p); err != nil {
		return err
	}
	start := time.Now()
	img, err := buildImage(ctx, p, o, stdout)
	if err != nil {
		return fmt.Errorf("building %s: %w", p.name, err)
	}
	if err := writeOutputs(ctx, img, o, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "built %s in %.1fs\n", p.name, time.Since(start).Seconds())
	return nil
}

// parseWithArg parses flags around exactly one positional argument.
func parseWithArg(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() == 0 {
		return "", errors.New("no image name")
	}
	arg := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return arg, nil
}

// defaults fills the options not given and checks them.
func (o *buildOptions) defaults(p preset) error {
	if o.src == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		o.src = root
	}
	if o.out == "" {
		o.out = filepath.Join(o.src, ".cache", "image", p.name+".tar")
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", filepath.Dir(o.out), err)
		}
	} else if st, err := os.Stat(filepath.Dir(o.out)); err != nil || !st.IsDir() {
		return fmt.Errorf("--out %s: directory %s does not exist", o.out, filepath.Dir(o.out))
	}
	if o.debDir == "" {
		o.debDir = filepath.Join(o.src, ".cache", "image", "debs")
	}
	if o.tag == "" {
		o.tag = p.tag
		if p.versionTag {
			o.alsoTags = []string{p.name + ":" + version.Version}
		}
	}
	if o.insecure && o.push == "" {
		return errors.New("--insecure without --push")
	}
	epoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	o.epoch = epoch
	return nil
}

// sourceDateEpoch is the images' one timestamp: $SOURCE_DATE_EPOCH, or 0
// (1970-01-01), so that a build depends on its inputs only.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// moduleRoot is the directory of the current Go module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", exitDetail(err))
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the repository or pass --src")
	}
	return filepath.Dir(mod), nil
}

// buildImage builds the binaries and assembles the image of p: the base
// layer, the iptables layer, then the binaries (the layer that changes most
// comes last).
func buildImage(ctx context.Context, p preset, o buildOptions, log io.Writer) (v1.Image, error) {
	bins, err := goBuild(ctx, o.src, p.binaries)
	if err != nil {
		return nil, err
	}
	type part struct {
		short, what string
		t           tree
	}
	var parts []part
	labels := map[string]string{"org.opencontainers.image.title": p.name}
	if p.base {
		parts = append(parts, part{"base", "base: /etc/passwd, /etc/group, /tmp", baseLayer()})
	}
	if p.iptables {
		t, pkgs, err := iptablesLayer(o.debDir)
		if err != nil {
			return nil, fmt.Errorf("iptables layer: %w", err)
		}
		parts = append(parts, part{"iptables", "iptables from Debian: " + strings.Join(pkgs, ", "), t})
		labels["dev.tether.iptables-packages"] = strings.Join(pkgs, ", ")
	}
	bt := tree{}
	var names []string
	for _, b := range p.binaries {
		bt.file(filepath.Join(p.binDir, b.name), 0o755, bins[b.name])
		names = append(names, b.name)
	}
	parts = append(parts, part{"binaries", "binaries: " + strings.Join(names, " "), bt})

	// Docker media types (empty.Image's): a docker-archive tarball keeps no
	// manifest, and its readers (go-containerregistry, containerd) rebuild
	// a Docker one, so only these give the same digest in the tarball, in a
	// registry and in the OCI layout.
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: runtime.GOARCH, OS: "linux", Created: v1.Time{Time: o.epoch},
		Config: v1.Config{User: p.user, Entrypoint: p.entrypoint, Env: []string{pathEnv}, WorkingDir: "/", Labels: labels},
	})
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	for _, pt := range parts {
		l, err := pt.t.layer(o.epoch)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", pt.what, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: l,
			History: v1.History{Created: v1.Time{Time: o.epoch}, CreatedBy: "hack/image " + pt.what}})
		if err != nil {
			return nil, fmt.Errorf("adding layer %s: %w", pt.what, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, fmt.Errorf("compressing layer %s: %w", pt.what, err)
		}
		fmt.Fprintf(log, "layer %-9s %6.2f MB files, %6.2f MB compressed: %s\n", pt.short, mb(pt.t.size()), mb(size), pt.what)
	}
	return img, nil
}

func mb(n int64) float64 { return float64(n) / 1e6 }

// baseLayer holds what a non-root static binary expects of a system: users
// root and nonroot (65532) and a world-writable /tmp.
func baseLayer() tree {
	t := tree{}
	t.file("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"))
	t.file("/etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n"))
	t.dir("/tmp", 0o1777)
	return t
}
