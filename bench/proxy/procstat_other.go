//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

var errNoProc = errors.New("proxybench reads /proc: Linux only")

func procCPU(int) (time.Duration, error) { return 0, errNoProc }

type memStat struct{ RSS, HWM, Anon int64 }

func procMem(int) (memStat, error) { return memStat{}, errNoProc }
func dieWithParent(*exec.Cmd)      {}

func countSyscalls(string, []*child) (func() (int64, error), error) { return nil, errNoProc }

func systemBusy() (time.Duration, error) { return 0, errNoProc }
