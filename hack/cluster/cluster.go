package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The node's fixed addresses. Everything lives inside the node's network
// namespace, so they cannot clash with the host's.
const (
	NodeName      = "tether-node"
	NodeIP        = "10.250.0.2"
	NodeCIDR      = NodeIP + "/24"
	PodCIDR       = "10.88.0.0/16"
	ServiceCIDR   = "10.96.0.0/16"
	APIServiceIP  = "10.96.0.1"
	DNSServiceIP  = "10.96.0.10"
	ClusterDomain = "cluster.local"
	APIPort       = 6443
	RegistryAddr  = "127.0.0.1:5000"
	// CgroupRoot is the cgroup (in every hierarchy) that holds all pods;
	// down removes it.
	CgroupRoot = "tether-cluster"
	// SandboxImage is containerd's pause image, served by the registry.
	SandboxImage = "registry.k8s.io/pause:3.10"
)

// Cluster is one node's state directory and where its parts come from.
type Cluster struct {
	Dir     string        // state, logs, namespaces
	Bin     string        // Kubernetes binaries, coredns, tether-image
	Images  string        // image tarballs for the registry
	Timeout time.Duration // for up
}

// path is a file under the state directory.
func (c *Cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.Dir}, elem...)...)
}

func (c *Cluster) netns() string { return c.path("ns", "net") }
func (c *Cluster) mntns() string { return c.path("ns", "mnt") }

// binaries are the programs up starts from c.Bin.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "coredns", "tether-image"}

// hostTools are the programs up needs from the host, with the Debian
// package that has each.
var hostTools = [][2]string{
	{"containerd", "containerd"}, {"runc", "runc"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"},
	{"ip", "iproute2"}, {"iptables", "iptables"}, {"conntrack", "conntrack"},
}

// cniPlugins are the CNI plugins the node's network uses, from Debian's
// containernetworking-plugins.
var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

// HostCNIBinDir is where Debian's containernetworking-plugins puts them.
// The node never writes there: containerd's bin_dir is the node's own
// directory (Cluster.cniBinDir) linking to these.
const HostCNIBinDir = "/usr/lib/cni"

// cniBinDir is containerd's CNI plugin directory, private to the node:
// links to the host's plugins, and whatever the node's pods install (the
// tether-cni-node DaemonSet writes tether-cni there, test/cluster gives it
// as the chart's cni.binDir). down removes it with the rest of the state.
func (c *Cluster) cniBinDir() string { return c.path("state", "cni-bin") }

// cniConfDir is containerd's CNI configuration directory (the chart's
// cni.confDir in test/cluster).
func (c *Cluster) cniConfDir() string { return c.path("etc", "cni") }

// check says what up needs and lacks, all of it at once.
func (c *Cluster) check() error {
	if os.Geteuid() != 0 {
		return &exitError{2, fmt.Errorf("a real node needs root (network and mount namespaces, cgroups, containerd); run as root")}
	}
	var missing []string
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(c.Bin, b)); err != nil {
			missing = append(missing, fmt.Sprintf("%s (hack/cluster/build.sh builds it into %s)", b, c.Bin))
		}
	}
	for _, t := range hostTools {
		if _, err := exec.LookPath(t[0]); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s; make deps installs it)", t[0], t[1]))
		}
	}
	for _, p := range cniPlugins {
		if _, err := os.Stat(filepath.Join(HostCNIBinDir, p)); err != nil {
			missing = append(missing, fmt.Sprintf("CNI plugin %s in %s (Debian package containernetworking-plugins)", p, HostCNIBinDir))
		}
	}
	for _, img := range []string{"tether", "pause"} {
		if _, err := os.Stat(filepath.Join(c.Images, img+".tar")); err != nil {
			missing = append(missing, fmt.Sprintf("image %s.tar in %s (make image builds it)", img, c.Images))
		}
	}
	if len(missing) > 0 {
		return &exitError{2, fmt.Errorf("cannot start a node; missing:\n  %s", strings.Join(missing, "\n  "))}
	}
	return nil
}

// Up starts the cluster: a new network and mount namespace, then every
// daemon inside them (see startInside), and returns once the node is Ready
// and cluster DNS answers. An earlier cluster in c.Dir is taken down first.
// When up fails, it takes down what it started and keeps the logs.
func (c *Cluster) Up() error {
	if err := c.check(); err != nil {
		return err
	}
	if _, err := os.Stat(c.path("ns")); err == nil {
		fmt.Println("cluster: taking down the cluster an earlier run left in", c.Dir)
		if err := c.Down(); err != nil {
			return fmt.Errorf("taking down the earlier cluster: %w", err)
		}
	}
	start := time.Now()
	if err := c.makeNamespaces(); err != nil {
		c.Down()
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The rest runs inside the namespaces, where the node's loopback and
	// addresses are reachable.
	cmd := exec.Command("nsenter", "--net="+c.netns(), "--mount="+c.mntns(), "--",
		self, "inside", "-dir", c.Dir, "-bin", c.Bin, "-images", c.Images, "-timeout", c.Timeout.String())
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: up failed; the logs stay in %s; taking the node down\n", c.path("logs"))
		if derr := c.Down(); derr != nil {
			fmt.Fprintln(os.Stderr, "cluster: down:", derr)
		}
		return fmt.Errorf("starting the node: %w", err)
	}
	fmt.Printf("cluster: up in %s; kubeconfig %s; run kubectl with hack/cluster/kubectl.sh\n",
		time.Since(start).Round(100*time.Millisecond), c.path("kubeconfig"))
	return nil
}

// Status says whether a cluster is up.
func (c *Cluster) Status() error {
	pids := c.pids()
	if len(pids) == 0 {
		if _, err := os.Stat(c.path("ns")); err == nil {
			return fmt.Errorf("no daemon runs, but %s holds an earlier cluster's namespaces: run cluster down", c.Dir)
		}
		return fmt.Errorf("no cluster in %s", c.Dir)
	}
	for name, pid := range pids {
		state := "running"
		if !alive(pid) {
			state = "not running"
		}
		fmt.Printf("%-24s pid %-8d %s\n", name, pid, state)
	}
	fmt.Println("kubeconfig:", c.path("kubeconfig"))
	return nil
}
