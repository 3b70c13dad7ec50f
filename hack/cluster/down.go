package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// cgroupFS is where the host's cgroup hierarchies are mounted.
const cgroupFS = "/sys/fs/cgroup"

// cgroupHierarchies are the directories under cgroupFS that hold a
// hierarchy: every v1 controller (cpu, memory, ..., name=systemd) and the
// unified v2 one, whichever this host has.
func cgroupHierarchies() []string {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS} // cgroup v2 only
	}
	entries, _ := os.ReadDir(cgroupFS)
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(cgroupFS, e.Name()))
		}
	}
	return out
}

// makeCgroupRoot creates CgroupRoot in every hierarchy: the kubelet
// refuses a cgroupRoot that does not exist.
func makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		if err := os.Mkdir(filepath.Join(h, CgroupRoot), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating the node's cgroup: %w", err)
		}
	}
	return nil
}

// Down stops every process of the node (its daemons, containerd's shims,
// the containers), then removes the namespaces, the cgroups and the state,
// and keeps c.Dir/logs. It does what it can from any state, also after an
// interrupted up, and reports what it could not undo.
func (c *Cluster) Down() error {
	if os.Geteuid() != 0 {
		return &exitError{2, errors.New("taking a node down needs root")}
	}
	procs := c.processes()
	if len(procs) > 0 {
		fmt.Printf("cluster: stopping %d processes\n", len(procs))
	}
	// The state is thrown away: no need to wait long for the API server and
	// etcd to drain (they take over 3 s), a kill loses nothing.
	left := stop(procs, 5*time.Second)
	var errs []error
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes still running after SIGKILL: %v", left))
	}
	for _, f := range []string{c.netns(), c.mntns(), c.path("ns")} {
		if err := unix.Unmount(f, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", f, err))
		}
	}
	if err := removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		// Only once nothing runs: the kubelet's and containerd's state has
		// held mounts, which went with the mount namespace.
		for _, d := range []string{"ns", "pids", "state", "pki", "etc", "sysctl", "kubeconfig"} {
			if err := os.RemoveAll(c.path(d)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Println("cluster: down; logs kept in", c.path("logs"))
	return nil
}

// pids are the daemons' recorded PIDs by name.
func (c *Cluster) pids() map[string]int {
	out := map[string]int{}
	files, _ := filepath.Glob(c.path("pids", "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			out[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
		}
	}
	return out
}

// processes are the PIDs that belong to the node: those in its network or
// mount namespace (the daemons, containerd's shims), and those in its
// cgroup (the containers, which have namespaces of their own).
func (c *Cluster) processes() []int {
	var nsInodes []uint64
	for _, f := range []string{c.netns(), c.mntns()} {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err == nil {
			nsInodes = append(nsInodes, st.Ino)
		}
	}
	seen := map[int]bool{}
	for _, pid := range c.pids() {
		if alive(pid) {
			seen[pid] = true
		}
	}
	procs, err := procfs.AllProcs()
	if err == nil {
		self := os.Getpid()
		for _, p := range procs {
			if p.PID == self {
				continue
			}
			if inNamespace(p, nsInodes) || inCgroup(p, "/"+CgroupRoot+"/") {
				seen[p.PID] = true
			}
		}
	}
	out := make([]int, 0, len(seen))
	for pid := range seen {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

func inNamespace(p procfs.Proc, inodes []uint64) bool {
	if len(inodes) == 0 {
		return false
	}
	nss, err := p.Namespaces()
	if err != nil {
		return false
	}
	for _, t := range []string{"net", "mnt"} {
		ns, ok := nss[t]
		if !ok {
			continue
		}
		for _, ino := range inodes {
			if uint64(ns.Inode) == ino {
				return true
			}
		}
	}
	return false
}

func inCgroup(p procfs.Proc, prefix string) bool {
	cgs, err := p.Cgroups()
	if err != nil {
		return false
	}
	for _, cg := range cgs {
		if strings.HasPrefix(cg.Path+"/", prefix) {
			return true
		}
	}
	return false
}

// stop sends SIGTERM to every pid, SIGKILL to those left after grace,
// and returns those still alive after that.
func stop(pids []int, grace time.Duration) []int {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	remaining := func() []int {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		return left
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(remaining()) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range remaining() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && len(remaining()) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	return remaining()
}

// removeCgroups removes CgroupRoot and everything under it, deepest first,
// from every hierarchy.
func removeCgroups() error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, CgroupRoot)
		var dirs []string
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
