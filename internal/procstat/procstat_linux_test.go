package procstat

import (
	"os"
	"testing"
	"time"
)

func TestOwnProcess(t *testing.T) {
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ { // burn some CPU to count
	}
	if cpu, err := CPU(os.Getpid()); err != nil || cpu <= 0 {
		t.Fatalf("CPU = %v, %v; want > 0 after a busy loop", cpu, err)
	}
	m, err := Memory(os.Getpid())
	if err != nil || m.RSS <= 0 || m.HWM < m.RSS || m.Anon <= 0 || m.Anon > m.RSS {
		t.Fatalf("Memory = %+v, %v", m, err)
	}
	if busy, err := SystemBusy(); err != nil || busy <= 0 {
		t.Fatalf("SystemBusy = %v, %v", busy, err)
	}
}

func TestMissingProcess(t *testing.T) {
	const pid = 1 << 30 // above pid_max
	if _, err := CPU(pid); err == nil {
		t.Error("CPU of a process that does not exist: no error")
	}
	if _, err := Memory(pid); err == nil {
		t.Error("Memory of a process that does not exist: no error")
	}
}
