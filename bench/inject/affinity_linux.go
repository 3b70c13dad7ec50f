package main

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// pinToOneCPU keeps the server process on the last CPU it may use, so
// "one core" holds even if the Go runtime's helper threads wake up.
func pinToOneCPU() {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return
	}
	last := -1
	for i := 0; i < runtime.NumCPU()*4 && i < 1024; i++ {
		if set.IsSet(i) {
			last = i
		}
	}
	if last < 0 {
		return
	}
	var one unix.CPUSet
	one.Set(last)
	unix.SchedSetaffinity(0, &one)
}
