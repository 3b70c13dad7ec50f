package demo

import "syscall"

// setParentDeathSignal has the kernel kill a component if tether demo
// itself dies without stopping it (kill -9), so nothing is left running.
func setParentDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
