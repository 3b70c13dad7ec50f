// Command cluster brings up and tears down a real single-node Kubernetes
// cluster for Tether's user-story tests (test/cluster): etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
// containerd with runc, the CNI bridge, kube-proxy and CoreDNS, all inside
// a network and a mount namespace of their own, so that the host's network,
// sysctls and mounts are left as they were.
//
//	cluster up     [-dir DIR] [-bin DIR] [-images DIR]
//	cluster down   [-dir DIR]
//	cluster status [-dir DIR]
//
// `make cluster-up` and `make cluster-down` run it; hack/cluster/kubectl.sh
// and hack/cluster/exec.sh run commands inside the node's namespaces.
// docs/install.md ("Running the real-node tests") shows the whole path.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// usage is printed for -h and for a missing or unknown command.
const usage = `usage: cluster up|down|status [flags]

  up      start a single-node cluster (needs root, the binaries from
          hack/kube/build.sh node, containerd, runc and the CNI plugins
          from make deps, and the images from make image)
  down    stop everything up started and remove its namespaces, mounts and
          cgroups; safe to run at any time, also after an interrupted up
  status  say whether a cluster is up and where its kubeconfig is
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	root := repoRoot()
	c := &Cluster{}
	fs.StringVar(&c.Dir, "dir", envOr("TETHER_CLUSTER_DIR", filepath.Join(root, ".cache/cluster/run")), "the cluster's state, logs and namespaces (env TETHER_CLUSTER_DIR)")
	fs.StringVar(&c.Bin, "bin", envOr("TETHER_KUBE_BIN_DIR", filepath.Join(root, ".cache/kube/bin")), "the Kubernetes binaries, CoreDNS and the image tool (hack/kube/build.sh node)")
	fs.StringVar(&c.Images, "images", filepath.Join(root, ".cache/image"), "image tarballs served to the node from its registry mirror (make image)")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "how long up waits for the cluster to be ready")
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage, "\nflags:\n"); fs.PrintDefaults() }
	var err error
	switch cmd {
	case "up", "inside", "down", "status":
		if err = fs.Parse(args); err != nil {
			os.Exit(2)
		}
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if c.Dir, err = filepath.Abs(c.Dir); err != nil {
		fatal(err)
	}
	switch cmd {
	case "up":
		err = c.Up()
	case "inside":
		err = c.startInside()
	case "down":
		err = c.Down()
	case "status":
		err = c.Status()
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(1)
}

// exitError carries an exit code other than 1 (2: cannot run here).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// repoRoot is the repository this program was started in: the nearest
// directory above the working directory holding go.mod and hack/cluster.
func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "hack", "cluster")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d
			}
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}
