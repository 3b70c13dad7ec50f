//go:build linux

package netns_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
)

func TestLinkDoAndProcesses(t *testing.T) {
	a, b := netns.New(t, "a"), netns.New(t, "b")
	ifA, ifB := netns.Link(t, a, b, netip.MustParsePrefix("10.211.9.1/24"), netip.MustParsePrefix("10.211.9.2/24"))
	if ifA != "eth0" || ifB != "eth0" {
		t.Fatalf("interfaces = %s, %s; want eth0, eth0", ifA, ifB)
	}
	if _, err := os.Stat(a.Path()); err != nil {
		t.Fatalf("namespace file: %v", err)
	}

	// A listener opened in b with Do is served from an ordinary goroutine.
	var ln net.Listener
	if err := b.Do(func() (err error) {
		ln, err = net.Listen("tcp", "10.211.9.2:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "hello from b")
	}()

	// The host cannot reach b's address; a can, over the veth pair.
	var got []byte
	if err := a.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		got, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if string(got) != "hello from b" {
		t.Fatalf("got %q", got)
	}

	// Commands run inside the namespace, as the UID asked for.
	if out := a.Run(t, "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "10.211.9.1/24") {
		t.Fatalf("ip addr in a: %s", out)
	}
	out, err := a.Output(context.Background(), 1337, "id", "-u")
	if err != nil || strings.TrimSpace(out) != "1337" {
		t.Fatalf("id -u as 1337 = %q, %v", out, err)
	}

	p := b.Start(t, 1337, "sleep", "60")
	select {
	case <-p.Done():
		t.Fatalf("sleep exited early: %v: %s", p.Err(), p.Output())
	case <-time.After(50 * time.Millisecond):
	}
}

func TestPodPair(t *testing.T) {
	pod, other, podIP := netns.PodPair(t, "pair", netip.MustParsePrefix("10.211.10.0/24"))
	if podIP != netip.MustParsePrefix("10.211.10.2/24") {
		t.Fatalf("podIP = %s, want 10.211.10.2/24", podIP)
	}
	if out := pod.Run(t, "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "10.211.10.2/24") {
		t.Errorf("ip addr in pod: %s", out)
	}
	if out := other.Run(t, "ip", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "10.211.10.3/24") {
		t.Errorf("ip addr in other: %s", out)
	}
	l, err := pod.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if err := other.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(podIP.Addr(), uint16(l.Addr().(*net.TCPAddr).Port)).String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Errorf("other cannot reach pod at %s: %v", podIP.Addr(), err)
	}
}

func TestNamesAreUnique(t *testing.T) {
	a, b := netns.New(t, "same"), netns.New(t, "same")
	if a.Name() == b.Name() {
		t.Fatalf("both namespaces are named %s", a.Name())
	}
}
