//go:build unix

package demo

import (
	"errors"
	"syscall"
)

// childProcAttr puts a component in a process group of its own: Ctrl-C
// in the terminal reaches only tether demo, which stops the components in
// order, and a stop reaches everything a component started.
func childProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	setParentDeathSignal(a)
	return a
}

// signalGroup sends sig to every process of the group led by pid.
func signalGroup(pid int, sig syscall.Signal) {
	syscall.Kill(-pid, sig)
}

// groupAlive reports whether any process of the group led by pid remains.
func groupAlive(pid int) bool {
	return !errors.Is(syscall.Kill(-pid, 0), syscall.ESRCH)
}

func errDemoUnsupported() error { return nil }
