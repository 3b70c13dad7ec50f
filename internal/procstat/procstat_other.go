//go:build !linux

package procstat

import (
	"errors"
	"os/exec"
	"time"
)

// ErrNoProc is what every call returns where there is no /proc.
var ErrNoProc = errors.New("procstat reads /proc: Linux only")

// CPU is not available here.
func CPU(int) (time.Duration, error) { return 0, ErrNoProc }

// Mem is a process's memory, in bytes.
type Mem struct{ RSS, HWM, Anon int64 }

// Memory is not available here.
func Memory(int) (Mem, error) { return Mem{}, ErrNoProc }

// DieWithParent does nothing here.
func DieWithParent(*exec.Cmd) {}

// SystemBusy is not available here.
func SystemBusy() (time.Duration, error) { return 0, ErrNoProc }

// Smaps is a process's memory from /proc/PID/smaps_rollup, in bytes.
type Smaps struct{ RSS, PSS, PrivateClean, PrivateDirty, Anonymous int64 }

// Private is the larger of PrivateDirty and Anonymous.
func (s Smaps) Private() int64 { return max(s.PrivateDirty, s.Anonymous) }

// SmapsRollup is not available here.
func SmapsRollup(int) (Smaps, error) { return Smaps{}, ErrNoProc }
