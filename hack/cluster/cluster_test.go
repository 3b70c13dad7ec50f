package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
)

// buildCluster builds this program into a temporary directory.
func buildCluster(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tether-cluster")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func runCluster(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

func TestBadCommandLines(t *testing.T) {
	bin := buildCluster(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: cluster up|down|status"},
		{[]string{"sideways"}, `unknown command "sideways"`},
		{[]string{"up", "-no-such-flag"}, "flag provided but not defined"},
	} {
		out, code := runCluster(t, bin, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("cluster %v: exit %d, %q; want exit 2 and %q", tc.args, code, out, tc.want)
		}
	}
}

// TestUpSaysAllThatIsMissing: with no binaries and no images, up names
// every missing part and how to get it, and starts nothing.
func TestUpSaysAllThatIsMissing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("up checks for root before anything else; this test needs root to get past it")
	}
	bin := buildCluster(t)
	dir, empty := t.TempDir(), t.TempDir()
	out, code := runCluster(t, bin, "up", "-dir", dir, "-bin", empty, "-images", empty)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, out)
	}
	for _, want := range []string{"kubelet (hack/cluster/build.sh", "coredns", "tether-image", "image tether.tar", "make image"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ns")); err == nil {
		t.Error("up made namespaces although it could not start")
	}
}

func TestNotRootIsRefusedClearly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: the refusal for non-root users cannot be seen")
	}
	bin := buildCluster(t)
	out, code := runCluster(t, bin, "up", "-dir", t.TempDir())
	if code != 2 || !strings.Contains(out, "needs root") {
		t.Fatalf("exit %d, %q", code, out)
	}
}

// hostState is what a node must not change on the host: its network
// (links, addresses, routes, iptables and ip6tables, sysctls the kubelet
// and kube-proxy set), its mounts, its cgroups and its processes.
func hostState(t *testing.T) map[string]string {
	t.Helper()
	state := map[string]string{}
	cmds := map[string][]string{
		"links":     {"ip", "-o", "link", "show"},
		"addresses": {"ip", "-o", "addr", "show"},
		"routes":    {"ip", "route", "show", "table", "all"},
		"iptables":  {"iptables-save"},
		"ip6tables": {"ip6tables-save"},
	}
	for name, argv := range cmds {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		state[name] = stripCounters(string(out))
	}
	for _, f := range []string{"/proc/sys/kernel/panic", "/proc/sys/kernel/panic_on_oops", "/proc/sys/vm/overcommit_memory",
		"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/netfilter/nf_conntrack_max"} {
		b, _ := os.ReadFile(f)
		state[f] = string(b)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	state["mounts"] = mountPoints(string(mounts))
	var cgroups []string
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, CgroupRoot)); err == nil {
			cgroups = append(cgroups, filepath.Join(h, CgroupRoot))
		}
	}
	state["cgroups"] = strings.Join(cgroups, "\n")
	return state
}

// stripCounters drops iptables-save's packet counters and comments, which
// change with any traffic.
func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndexByte(l, '['); i > 0 {
				l = l[:i]
			}
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// mountPoints lists the mount points in a mountinfo (field 5), sorted.
func mountPoints(mountinfo string) string {
	var pts []string
	for _, l := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(l); len(f) > 4 {
			pts = append(pts, f[4])
		}
	}
	sort.Strings(pts)
	return strings.Join(pts, "\n")
}

func compareHost(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("the host's %s changed:\nbefore:\n%s\nafter:\n%s", k, v, after[k])
		}
	}
}

// nodeBinaries returns the directories up needs, or skips the test.
func nodeBinaries(t *testing.T) (binDir, imageDir string) {
	t.Helper()
	if os.Getenv("TETHER_CLUSTER_TEST") == "" {
		t.Skip("set TETHER_CLUSTER_TEST=1 to start a real node (make cluster-test does, after make cluster-bins and make image)")
	}
	if os.Geteuid() != 0 {
		t.Skip("a real node needs root")
	}
	root, _ := filepath.Abs("../..")
	binDir, imageDir = filepath.Join(root, ".cache/kube/bin"), filepath.Join(root, ".cache/image")
	if v := os.Getenv("TETHER_KUBE_BIN_DIR"); v != "" {
		binDir = v
	}
	return binDir, imageDir
}

// TestInterruptedUpThenDownLeavesNoTrace: up killed halfway (here: once
// the kubelet has started, as a CI timeout would), then down, leaves the
// host's network, sysctls, mounts and cgroups as they were, and no process
// of the node running.
func TestInterruptedUpThenDownLeavesNoTrace(t *testing.T) {
	binDir, imageDir := nodeBinaries(t)
	bin := buildCluster(t)
	dir := t.TempDir()
	before := hostState(t)

	cmd := exec.Command(bin, "up", "-dir", dir, "-bin", binDir, "-images", imageDir)
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "containerd") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the kubelet starts next
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	if !strings.Contains(out.String(), "containerd") {
		t.Fatalf("up did not get as far as containerd:\n%s", out.String())
	}
	c := &Cluster{Dir: dir}
	if len(c.processes()) == 0 {
		t.Fatalf("after killing up, no daemon of the node runs: the daemons did not outlive up\n%s", out.String())
	}

	if dout, code := runCluster(t, bin, "down", "-dir", dir); code != 0 {
		t.Fatalf("down: exit %d\n%s", code, dout)
	}
	if left := c.processes(); len(left) > 0 {
		t.Errorf("processes of the node still running after down: %v", left)
	}
	compareHost(t, before, hostState(t))
	// down again: nothing to do, and says so without failing.
	if dout, code := runCluster(t, bin, "down", "-dir", dir); code != 0 {
		t.Fatalf("a second down: exit %d\n%s", code, dout)
	}
	if _, err := os.Stat(filepath.Join(dir, "logs", "kube-apiserver.log")); err != nil {
		t.Errorf("down did not keep the logs: %v", err)
	}
}
