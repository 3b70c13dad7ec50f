package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildPause builds hack/image/pause as the image does.
func buildPause(t *testing.T) string {
	t.Helper()
	bins, err := goBuild(t.Context(), repoRoot(t), presets["pause"].binaries)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(bin, bins["pause"], 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestPauseExitsOnSignal(t *testing.T) {
	bin := buildPause(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(200 * time.Millisecond) // let it install its handlers
		select {
		case err := <-done:
			t.Fatalf("pause exited before any signal: %v", err)
		default:
		}
		cmd.Process.Signal(sig)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pause on %v: %v, want exit 0", sig, err)
			}
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("pause still running 5 s after %v", sig)
		}
	}
}

// TestPauseReaps runs pause as PID 1 of a new PID namespace, orphans a
// process into it, and checks that pause reaps it once it exits.
func TestPauseReaps(t *testing.T) {
	requireRoot(t)
	bin := buildPause(t)
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", bin)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stopProcess(t, cmd)
	var pid int
	for deadline := time.Now().Add(5 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pid = firstChild(cmd.Process.Pid)
	}
	if pid == 0 {
		t.Fatal("pause did not start under unshare")
	}
	defer syscall.Kill(pid, syscall.SIGTERM) // unshare exits with it
	// sh exits at once, so its background sleep is reparented to pause.
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--", "sh", "-c", "sleep 1 </dev/null >/dev/null 2>&1 & echo $!").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	sawChild := false
	for time.Now().Before(deadline) {
		kids := children(pid)
		if len(kids) > 0 {
			sawChild = true
		} else if sawChild {
			return // the orphan ran under pause and was reaped
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("pause's children after 5 s: %v (saw the orphan: %v); a zombie was not reaped", children(pid), sawChild)
}

// firstChild returns the first child of pid, or 0.
func firstChild(pid int) int {
	if kids := children(pid); len(kids) > 0 {
		return kids[0]
	}
	return 0
}

// children lists pid's children from /proc.
func children(pid int) []int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}
