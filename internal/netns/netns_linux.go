//go:build linux

package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-mesh/tether/internal/testutil"
)

// RequireEnv, when set to 1 or true (like CI=true), turns a missing
// prerequisite into a test failure instead of a skip.
const RequireEnv = "TETHER_REQUIRE_NETNS"

// runDir is where `ip netns add` pins named namespaces.
const runDir = "/run/netns"

// namePrefix starts the name of every namespace this package creates; the
// process ID that follows it lets New sweep namespaces left behind by test
// processes that died before their cleanup ran.
const namePrefix = "tether-"

// Capability bits of /proc/self/status CapEff (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// RequireRoot skips the test unless it runs as root with the capabilities and
// tools that network-namespace tests need (`ip` from iproute2, and the
// `iptables`, `iptables-save` and `iptables-restore` tools). When CI=true or
// TETHER_REQUIRE_NETNS=1, a missing tool or capability fails the test instead,
// because CI installs them (`make deps`); not being root is always a skip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netns: needs root for network namespaces and iptables; run as root (CI does)")
	}
	for _, tool := range []struct{ bin, pkg string }{
		{"ip", "iproute2"},
		{"iptables", "iptables"},
		{"iptables-save", "iptables"},
		{"iptables-restore", "iptables"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			missing(t, fmt.Sprintf("%s not found on PATH: install the Debian package %s", tool.bin, tool.pkg))
		}
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		missing(t, fmt.Sprintf("read capabilities: %v", err))
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "NET_ADMIN"}, {capSysAdmin, "SYS_ADMIN"}} {
		ok, err := hasCap(string(status), c.bit)
		if err != nil {
			missing(t, fmt.Sprintf("read capabilities: %v", err))
		}
		if !ok {
			missing(t, fmt.Sprintf("root without CAP_%s cannot create network namespaces: "+
				"run in a privileged container or on a VM", c.name))
		}
	}
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if truthy(os.Getenv("CI")) || truthy(os.Getenv(RequireEnv)) {
		t.Fatal("netns: " + msg + " (CI or " + RequireEnv + " is set, so this is a failure, not a skip)")
	}
	t.Skip("netns: " + msg)
}

func truthy(s string) bool {
	b, err := strconv.ParseBool(s)
	return err == nil && b
}

// hasCap reports whether the CapEff line of a /proc/<pid>/status text has bit set.
func hasCap(status string, bit uint) (bool, error) {
	for line := range strings.Lines(status) {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return false, fmt.Errorf("parse CapEff %q: %w", strings.TrimSpace(v), err)
		}
		return mask&(1<<bit) != 0, nil
	}
	return false, errors.New("no CapEff line in /proc/self/status")
}

// NS is a named network namespace that lives as long as the test that made it.
// Its methods are safe for concurrent use.
type NS struct {
	name string

	mu    sync.Mutex
	links int // veth ends created in this namespace, for eth<N> names
}

var (
	seq   atomic.Int64
	sweep sync.Once
)

// New creates a network namespace with a unique name derived from name, brings
// its loopback interface up, and deletes it (with every veth end inside it)
// when the test ends. It calls RequireRoot first.
func New(t testing.TB, name string) *NS {
	t.Helper()
	RequireRoot(t)
	sweep.Do(sweepStale)
	ns := &NS{name: fmt.Sprintf("%s%s-%d-%d", namePrefix, sanitize(name), os.Getpid(), seq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip netns add %s: %v: %s", ns.name, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("netns: ip netns del %s: %v: %s", ns.name, err, bytes.TrimSpace(out))
		}
	})
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9]+`)

// sanitize keeps a short, filename- and ip-safe form of a test-given name.
func sanitize(name string) string {
	s := unsafeChars.ReplaceAllString(name, "")
	if len(s) > 24 {
		s = s[:24]
	}
	if s == "" {
		s = "ns"
	}
	return s
}

var staleName = regexp.MustCompile(`^` + namePrefix + `[a-zA-Z0-9]+-(\d+)-\d+$`)

// sweepStale deletes namespaces this package created in test processes that
// no longer exist (killed before their cleanup ran). Namespaces of live
// processes, and any other namespace, are left alone.
func sweepStale() {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// Name is the namespace's name, as `ip netns list` shows it.
func (ns *NS) Name() string { return ns.name }

// Path is the namespace's file under /run/netns.
func (ns *NS) Path() string { return filepath.Join(runDir, ns.name) }

// ip runs `ip -n <ns> args...` and fails the test on error.
func (ns *NS) ip(t testing.TB, args ...string) {
	t.Helper()
	full := append([]string{"-n", ns.name}, args...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip %s: %v: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
}

func (ns *NS) nextIf() string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	name := fmt.Sprintf("eth%d", ns.links)
	ns.links++
	return name
}

// Link joins a and b with a veth pair, gives the a end address ipA and the b
// end ipB (both with their prefix length, e.g. 10.211.0.1/24, so each side
// gets a connected route to the other), and brings both ends up. The ends are
// named eth0, eth1, ... in the order links are made in each namespace; Link
// returns the two names. IPv6 addresses skip duplicate address detection and
// get static neighbour entries, so they are usable at once.
func Link(t testing.TB, a, b *NS, ipA, ipB netip.Prefix) (ifA, ifB string) {
	t.Helper()
	if a == b {
		t.Fatal("netns: Link needs two different namespaces")
	}
	ifA, ifB = a.nextIf(), b.nextIf()
	// Creating both ends directly inside their namespaces keeps the host's
	// interface names out of it.
	args := []string{"link", "add", ifA, "netns", a.name, "type", "veth", "peer", "name", ifB, "netns", b.name}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	for _, end := range []struct {
		ns     *NS
		ifname string
		addr   netip.Prefix
	}{{a, ifA, ipA}, {b, ifB, ipB}} {
		end.ns.AddAddr(t, end.ifname, end.addr)
		end.ns.ip(t, "link", "set", end.ifname, "up")
	}
	if ipA.Addr().Is6() && ipB.Addr().Is6() {
		// The first IPv6 connection over a fresh veth pair otherwise waits
		// about a second for neighbour discovery.
		macA, macB := a.mac(t, ifA), b.mac(t, ifB)
		a.ip(t, "-6", "neigh", "replace", ipB.Addr().String(), "lladdr", macB, "dev", ifA, "nud", "permanent")
		b.ip(t, "-6", "neigh", "replace", ipA.Addr().String(), "lladdr", macA, "dev", ifB, "nud", "permanent")
	}
	return ifA, ifB
}

// PodPair makes two namespaces, named name-pod and name-other, as two pods
// on one node network: a veth pair joins them, pod at the address .2 of
// subnet (such as 10.213.0.0/24) and other at .3. podIP is pod's address
// with subnet's prefix length: where other pods call it.
func PodPair(t testing.TB, name string, subnet netip.Prefix) (pod, other *NS, podIP netip.Prefix) {
	t.Helper()
	pod, other = New(t, name+"-pod"), New(t, name+"-other")
	podAddr := subnet.Masked().Addr().Next().Next()
	podIP = netip.PrefixFrom(podAddr, subnet.Bits())
	Link(t, pod, other, podIP, netip.PrefixFrom(podAddr.Next(), subnet.Bits()))
	return pod, other, podIP
}

// mac returns the hardware address of interface ifname in ns.
func (ns *NS) mac(t testing.TB, ifname string) string {
	t.Helper()
	var mac string
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatalf("netns: %s in %s: %v", ifname, ns.name, err)
	}
	return mac
}

// AddAddr adds addr to interface ifname inside ns (for a second address on a
// link, say). IPv6 addresses skip duplicate address detection.
func (ns *NS) AddAddr(t testing.TB, ifname string, addr netip.Prefix) {
	t.Helper()
	args := []string{"addr", "add", addr.String(), "dev", ifname}
	if addr.Addr().Is6() {
		args = append(args, "nodad")
	}
	ns.ip(t, args...)
}

// Do runs fn on an OS thread that has been switched into ns, then switches the
// thread back. Sockets fn opens belong to ns and keep working after Do
// returns (a listener made in Do can be served from any goroutine). fn must
// not expect goroutines it starts to run inside ns. If the thread cannot be
// switched back, it is discarded rather than reused.
func (ns *NS) Do(fn func() error) error {
	target, err := unix.Open(ns.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.name, err)
	}
	defer unix.Close(target)

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Keep the thread locked until it is back in its own namespace: a
		// goroutine that exits while locked takes its thread with it.
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		orig, err := unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open %s: %w", self, err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns.name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside ns, as net.Listen does.
func (ns *NS) Listen(network, addr string) (l net.Listener, err error) {
	err = ns.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside ns, as net.ListenPacket does.
func (ns *NS) ListenPacket(network, addr string) (c net.PacketConn, err error) {
	err = ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// ServeUDP answers every datagram to addr inside ns with reply until the
// test ends.
func (ns *NS) ServeUDP(t testing.TB, addr, reply string) {
	t.Helper()
	c, err := ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen on udp %s in %s: %v", addr, ns.name, err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo([]byte(reply), from)
		}
	}()
}

// StartCmd starts cmd inside ns: the child is forked from a thread in ns, so
// it runs there (its UID is whatever cmd.SysProcAttr says). The caller waits
// for it.
func (ns *NS) StartCmd(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// asUser makes cmd run as uid (with gid = uid and no supplementary groups)
// and be killed if the test process dies.
func asUser(cmd *exec.Cmd, uid int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)},
		Pdeathsig:  syscall.SIGKILL,
	}
}

// Output runs args inside ns as uid (gid = uid) and returns its combined
// stdout and stderr. A non-zero exit is an error.
func (ns *NS) Output(ctx context.Context, uid int, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("netns: no command")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	asUser(cmd, uid)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ns.StartCmd(cmd); err != nil {
		return "", fmt.Errorf("start %s in %s: %w", args[0], ns.name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns.name, err, bytes.TrimSpace(out.Bytes()))
	}
	return out.String(), nil
}

// Run runs args inside ns as root, fails the test if it fails, and returns its
// combined output.
func (ns *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, 0, args...)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	return out
}

// Proc is a long-running process started by Start.
type Proc struct {
	cmd  *exec.Cmd
	out  testutil.SyncBuffer
	done chan struct{}
	err  error // set before done is closed
}

// Start starts args inside ns as uid (gid = uid), for example a sidecar as
// UID 1337, and kills it (and waits for it) when the test ends.
func (ns *NS) Start(t testing.TB, uid int, args ...string) *Proc {
	t.Helper()
	if len(args) == 0 {
		t.Fatal("netns: Start needs a command")
	}
	p := &Proc{cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{})}
	asUser(p.cmd, uid)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := ns.StartCmd(p.cmd); err != nil {
		t.Fatalf("netns: start %s in %s: %v", args[0], ns.name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("netns: %s (pid %d) did not exit after SIGKILL", args[0], p.cmd.Process.Pid)
		}
	})
	return p
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error; valid once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Output is what the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Executable returns a copy of the running test binary that any UID may
// execute (the original sits in a 0700 build directory), so a test can re-run
// itself in a helper mode as an unprivileged user with Start or Output. The
// copy is removed when the test ends.
func Executable(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("netns: find test binary: %v", err)
	}
	dir, err := os.MkdirTemp("", "tether-netns-bin-")
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("netns: %v", err)
	}
	dst := filepath.Join(dir, filepath.Base(self))
	if err := copyFile(dst, self); err != nil {
		t.Fatalf("netns: copy test binary: %v", err)
	}
	return dst
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
