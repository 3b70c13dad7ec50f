package cluster_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeNode is a node whose hack/cluster scripts are the given shell
// scripts, to test the helpers without a cluster.
func fakeNode(t *testing.T, scripts map[string]string) *node {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "hack", "cluster")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &node{root: root}
}

func TestNodeHelpers(t *testing.T) {
	n := fakeNode(t, map[string]string{
		"kubectl.sh": `case "$1" in
  echo) shift; echo "$@" ;;
  stdin) cat ;;
  fail) echo partial; echo "error: no such pod" >&2; exit 3 ;;
  hang) exec sleep 30 ;;
esac`,
		"exec.sh": `echo "listening on any" >&2; exec sleep 30`,
	})

	if out, err := n.kubectl(10*time.Second, "echo", "get", "pods"); err != nil || out != "get pods\n" {
		t.Errorf("kubectl echo: %q, %v", out, err)
	}
	if out, err := n.kubectlIn(10*time.Second, "kind: Pod\n", "stdin"); err != nil || out != "kind: Pod\n" {
		t.Errorf("kubectl with stdin: %q, %v", out, err)
	}

	out, err := n.kubectl(10*time.Second, "fail")
	var ce *cmdError
	if !errors.As(err, &ce) || ce.exitCode() != 3 {
		t.Fatalf("failing kubectl: %v, want a cmdError with exit code 3", err)
	}
	for _, want := range []string{"hack/cluster/kubectl.sh fail", "exit status 3", "partial", "error: no such pod"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if out != "partial\n" {
		t.Errorf("stdout of a failing command: %q", out)
	}

	start := time.Now()
	_, err = n.kubectl(300*time.Millisecond, "hang")
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Errorf("hanging kubectl: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 300ms timeout took %s", d)
	}

	b := n.start(t, time.Minute, "exec.sh", "tcpdump")
	eventually(t, "the background command's stderr", 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(b.stderr.String(), "listening on") {
			return errors.New("not yet")
		}
		return nil
	})
	if err := b.wait(100 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("wait on a running command: %v", err)
	}
	b.interrupt()
	if err := b.wait(10 * time.Second); err == nil || !strings.Contains(err.Error(), "signal: interrupt") {
		t.Errorf("after interrupt: %v, want the command ended by SIGINT", err)
	}

	if got := template(t, "deny-web-to-db.yaml", "db-from-api-only", "renamed"); !strings.Contains(got, "name: renamed") {
		t.Errorf("template did not replace: %s", got)
	}
}
