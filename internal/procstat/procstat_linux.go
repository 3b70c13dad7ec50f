// Package procstat reads a process's CPU time and memory, and the
// machine's busy CPU time, from /proc, for the benchmarks. Linux only;
// elsewhere every call fails with ErrNoProc.
package procstat

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// userHZ is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100
// on every Linux architecture Go supports).
const userHZ = 100

// CPU returns the user+system CPU time of every thread of pid so far.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// Mem is a process's memory from /proc/PID/status, in bytes.
type Mem struct {
	RSS, HWM int64 // VmRSS (now), VmHWM (peak)
	Anon     int64 // RssAnon: heap and stacks, not the mapped binary
}

// Memory reads pid's Mem.
func Memory(pid int) (Mem, error) {
	var m Mem
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		dst := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.HWM, "RssAnon": &m.Anon}[k]
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return m, fmt.Errorf("/proc/%d/status %s: %v", pid, k, err)
		}
		*dst = kb << 10
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, s.Err()
}

// DieWithParent makes cmd's process get SIGKILL if this process dies
// without stopping it.
func DieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// SystemBusy returns the CPU time all CPUs have spent busy so far
// (/proc/stat: user, nice, system, irq, softirq, steal).
func SystemBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %v", line, err)
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / userHZ, nil
}

// Smaps is a process's memory from /proc/PID/smaps_rollup, in bytes: how
// much of its resident memory it shares with other processes.
type Smaps struct {
	// RSS counts every resident page the process maps; PSS divides each
	// page by the number of processes that map it, so the PSS of a group
	// of processes adds up to the memory they use together.
	RSS, PSS int64
	// PrivateClean and PrivateDirty are pages only this process maps:
	// clean ones (file pages it alone has touched) and dirty ones (its
	// heap, stacks and written data).
	PrivateClean, PrivateDirty int64
	// Anonymous is memory that belongs to no file: heap, stacks and the
	// copied-on-write pages of private file mappings.
	Anonymous int64
}

// Private is what the process costs on its own, beyond the pages it
// shares: the larger of PrivateDirty and Anonymous. Without fork or swap
// the two cover the same pages (an anonymous page mapped by one process
// is private dirty); the larger is taken so that neither is understated.
func (s Smaps) Private() int64 { return max(s.PrivateDirty, s.Anonymous) }

// SmapsRollup reads pid's Smaps (github.com/prometheus/procfs, which sums
// /proc/PID/smaps where the kernel has no smaps_rollup).
func SmapsRollup(pid int) (Smaps, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return Smaps{}, fmt.Errorf("smaps of pid %d: %w", pid, err)
	}
	r, err := p.ProcSMapsRollup()
	if err != nil {
		return Smaps{}, fmt.Errorf("smaps of pid %d: %w", pid, err)
	}
	if r.Rss == 0 {
		return Smaps{}, fmt.Errorf("/proc/%d/smaps_rollup: no Rss (a kernel thread, or a process that is exiting)", pid)
	}
	return Smaps{RSS: int64(r.Rss), PSS: int64(r.Pss), PrivateClean: int64(r.PrivateClean),
		PrivateDirty: int64(r.PrivateDirty), Anonymous: int64(r.Anonymous)}, nil
}
