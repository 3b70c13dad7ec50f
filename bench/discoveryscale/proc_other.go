//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

var errNoProc = errors.New("discoveryscale reads /proc: Linux only")

func procCPU(int) (time.Duration, error) { return 0, errNoProc }

type memStat struct{ RSS, HWM, Anon int64 }

func procMem(int) (memStat, error) { return memStat{}, errNoProc }
func dieWithParent(*exec.Cmd)      {}

func systemBusy() (time.Duration, error) { return 0, errNoProc }
