//go:build unix && !linux

package demo

import "syscall"

// setParentDeathSignal does nothing where the kernel has no parent-death
// signal: there a component outlives a tether demo killed with kill -9.
func setParentDeathSignal(*syscall.SysProcAttr) {}
