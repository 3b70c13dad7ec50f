package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// makeNamespaces creates the node's network and mount namespaces, kept
// alive by bind mounts on c.Dir/ns/net and c.Dir/ns/mnt (util-linux's
// persistent namespaces: the directory holding them is a private mount).
func (c *Cluster) makeNamespaces() error {
	dir := c.path("ns")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making %s a private mount: %w", dir, err)
	}
	for _, f := range []string{c.netns(), c.mntns()} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return err
		}
	}
	return run("unshare", "--net="+c.netns(), "--mount="+c.mntns(), "--propagation", "private", "true")
}

// setupInside prepares the namespaces once inside them: the node's
// network (loopback, an interface with the node IP, forwarding,
// bridged traffic through iptables as kube-proxy needs), and private
// mounts over the paths the kubelet, containerd and CNI write outside
// their configurable directories, and over the three kernel sysctls the
// kubelet insists on setting, so that the host's stay as they are.
func (c *Cluster) setupInside() error {
	steps := [][]string{
		{"ip", "link", "set", "lo", "up"},
		// A veth pair with both ends inside the node (the dummy driver
		// is not always there): eth0 holds the node IP.
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"},
		{"ip", "addr", "add", NodeCIDR, "dev", "eth0"},
		{"ip", "link", "set", "eth0-peer", "up"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "route", "add", "default", "dev", "eth0"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	// Per network namespace on Linux 5.3 and later.
	for path, value := range map[string]string{
		"/proc/sys/net/ipv4/ip_forward": "1",
	} {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s inside the node: %w", path, err)
		}
	}
	if err := writeBridgeNF(); err != nil {
		return err
	}
	// /run and /var/log: tmpfs inside the node (netns mounts under
	// /run/netns, containerd's /run/containerd, /var/log/pods and
	// /var/log/containers, the xtables lock).
	for _, dir := range []string{"/run", "/var/log"} {
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=755"); err != nil {
			return fmt.Errorf("mounting a tmpfs on %s inside the node: %w", dir, err)
		}
	}
	for _, d := range []string{"/run/netns", "/var/log/pods", "/var/log/containers"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The kubelet sets these (protectKernelDefaults false); give it files
	// of its own with the values it wants.
	for name, value := range map[string]string{
		"kernel/panic":         "10",
		"kernel/panic_on_oops": "1",
		"vm/overcommit_memory": "1",
	} {
		file := c.path("sysctl", strings.ReplaceAll(name, "/", "."))
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(file, []byte(value+"\n"), 0o644); err != nil {
			return err
		}
		if err := unix.Mount(file, "/proc/sys/"+name, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s over /proc/sys/%s: %w", file, name, err)
		}
	}
	return nil
}

// writeBridgeNF makes bridged pod-to-pod traffic go through iptables, which
// kube-proxy's Service NAT needs. The sysctl exists once br_netfilter is
// loaded (per network namespace since Linux 5.3).
func writeBridgeNF() error {
	const path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s is missing: load br_netfilter on the host (modprobe br_netfilter), kube-proxy needs it", path)
	}
	return os.WriteFile(path, []byte("1"), 0o644)
}

// run runs a command and returns its output in the error when it fails.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
