package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// node drives the real node only through hack/cluster/kubectl.sh and
// hack/cluster/exec.sh, each call bounded by a timeout.
type node struct {
	root string // the repository
}

// cmdError is a failed command with everything it printed.
type cmdError struct {
	args           []string
	err            error
	stdout, stderr string
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(e.args, " "), e.err, tail(e.stdout, 4000), tail(e.stderr, 4000))
}

// exitCode is the command's exit code, or -1 if it did not exit.
func (e *cmdError) exitCode() int {
	var ee *exec.ExitError
	if errors.As(e.err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]" + s[len(s)-n:]
}

// script is the path of hack/cluster/NAME.
func (n *node) script(name string) string { return filepath.Join(n.root, "hack", "cluster", name) }

// run runs hack/cluster/SCRIPT ARGS... with stdin, killing it after timeout.
func (n *node) run(timeout time.Duration, stdin string, script string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.script(script), args...)
	cmd.Dir = n.root
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s (%v)", timeout, err)
	}
	if err != nil {
		return stdout.String(), &cmdError{args: append([]string{"hack/cluster/" + script}, args...), err: err, stdout: stdout.String(), stderr: stderr.String()}
	}
	return stdout.String(), nil
}

// kubectl runs kubectl; an error carries the command and its output.
func (n *node) kubectl(timeout time.Duration, args ...string) (string, error) {
	return n.run(timeout, "", "kubectl.sh", args...)
}

// kubectlIn runs kubectl with stdin (for apply -f -).
func (n *node) kubectlIn(timeout time.Duration, stdin string, args ...string) (string, error) {
	return n.run(timeout, stdin, "kubectl.sh", args...)
}

// must runs kubectl and fails the test if it fails.
func (n *node) must(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := n.kubectl(timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// mustIn runs kubectl with stdin and fails the test if it fails.
func (n *node) mustIn(t *testing.T, timeout time.Duration, stdin string, args ...string) string {
	t.Helper()
	out, err := n.kubectlIn(timeout, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pods returns the pods of a namespace matching a label selector.
func (n *node) pods(t *testing.T, ns, selector string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	n.getJSON(t, &list, "-n", ns, "get", "pods", "-l", selector, "-o", "json")
	return list.Items
}

// pod returns the one pod of a namespace matching selector.
func (n *node) pod(t *testing.T, ns, selector string) corev1.Pod {
	t.Helper()
	p := n.pods(t, ns, selector)
	if len(p) != 1 {
		names := []string{}
		for _, x := range p {
			names = append(names, x.Name)
		}
		t.Fatalf("want one pod with %s in %s, got %d: %v", selector, ns, len(p), names)
	}
	return p[0]
}

// getJSON runs kubectl ARGS (which ask for -o json) and decodes into v.
func (n *node) getJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := n.must(t, time.Minute, args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("kubectl %s: decoding: %v\n%s", strings.Join(args, " "), err, tail(out, 2000))
	}
}

// background is a command running on the node while the test goes on.
type background struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan struct{}
	err            error
}

// start runs hack/cluster/SCRIPT ARGS... in the background; it is killed
// after timeout, and when the test ends if it still runs.
func (n *node) start(t *testing.T, timeout time.Duration, script string, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	b := &background{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	b.cmd = exec.CommandContext(ctx, n.script(script), args...)
	b.cmd.Dir = n.root
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	b.cmd.WaitDelay = 5 * time.Second
	if err := b.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting hack/cluster/%s %s: %v", script, strings.Join(args, " "), err)
	}
	go func() {
		b.err = b.cmd.Wait()
		if ctx.Err() != nil {
			b.err = fmt.Errorf("timed out after %s (%v)", timeout, b.err)
		}
		if b.err != nil {
			b.err = &cmdError{args: append([]string{"hack/cluster/" + script}, args...), err: b.err, stdout: b.stdout.String(), stderr: b.stderr.String()}
		}
		cancel()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

// interrupt sends SIGINT to the command (kubectl.sh and exec.sh exec their
// command, so this is the command itself).
func (b *background) interrupt() { b.cmd.Process.Signal(syscall.SIGINT) }

// wait waits for the command to end and returns its error.
func (b *background) wait(timeout time.Duration) error {
	select {
	case <-b.done:
		return b.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", strings.Join(b.cmd.Args, " "), timeout)
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a concurrent reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

// eventually retries check every interval until it returns nil or timeout
// passes, then fails the test with the last error.
func eventually(t *testing.T, what string, timeout, interval time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	start := time.Now()
	var first error
	for attempt := 1; ; attempt++ {
		err := check()
		if err == nil {
			if first != nil {
				t.Logf("%s: after %s, attempt %d (the first said: %v)", what, time.Since(start).Round(100*time.Millisecond), attempt, first)
			} else {
				t.Logf("%s: after %s", what, time.Since(start).Round(100*time.Millisecond))
			}
			return
		}
		if first == nil {
			first = err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// template reads testdata/NAME and replaces each OLD with NEW.
func template(t *testing.T, name string, oldnew ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(oldnew...).Replace(string(b))
}
