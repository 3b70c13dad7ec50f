package procstat

import (
	"os"
	"os/exec"
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

// TestSmapsRollup: this process's smaps add up (PSS and the private pages
// within RSS), and two processes of one binary share its pages: their PSS
// is below their RSS.
func TestSmapsRollup(t *testing.T) {
	s, err := SmapsRollup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.PSS <= 0 || s.PSS > s.RSS || s.PrivateClean+s.PrivateDirty > s.RSS || s.Anonymous <= 0 || s.Private() <= 0 || s.Private() > s.RSS {
		t.Fatalf("SmapsRollup(self) = %+v", s)
	}
	var cmds []*exec.Cmd
	for range 2 {
		cmd := exec.Command("sleep", "30")
		DieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			t.Skipf("no sleep to start: %v", err)
		}
		cmds = append(cmds, cmd)
	}
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	})
	for _, c := range cmds {
		var s Smaps
		var err error
		// The child maps its binary and libc right after exec.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			s, err = SmapsRollup(c.Process.Pid)
			if err == nil && s.PSS < s.RSS || time.Now().After(deadline) {
				break
			}
		}
		if err != nil || s.PSS >= s.RSS {
			t.Errorf("sleep (pid %d), one of two of the same binary: %+v, %v; want PSS < RSS", c.Process.Pid, s, err)
		}
	}
	if _, err := SmapsRollup(1 << 30); err == nil {
		t.Error("SmapsRollup of a process that does not exist: no error")
	}
}
