//go:build !unix

package demo

import (
	"errors"
	"syscall"
)

func childProcAttr() *syscall.SysProcAttr     { return nil }
func signalGroup(pid int, sig syscall.Signal) {}
func groupAlive(pid int) bool                 { return false }
func errDemoUnsupported() error {
	return errors.New("tether demo runs on Linux and other Unix systems only (it manages its components as process groups)")
}
