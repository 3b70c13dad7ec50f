package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPortsAreFreeDistinctAndBelowEphemeral(t *testing.T) {
	ports, err := Ports(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p < lowest || p >= ephemeralLow() {
			t.Fatalf("port %d outside [%d, %d)", p, lowest, ephemeralLow())
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		l.Close()
	}
}

func TestRangeSkipsBusyPorts(t *testing.T) {
	base, err := Range(8)
	if err != nil {
		t.Fatal(err)
	}
	for p := base; p < base+8; p++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d of the range is not free: %v", p, err)
		}
		defer l.Close()
	}
	// A second range never overlaps the first.
	other, err := Range(8)
	if err != nil {
		t.Fatal(err)
	}
	if other < base+8 && base < other+8 {
		t.Fatalf("ranges %d+8 and %d+8 overlap", base, other)
	}
}

func TestUnusableHostSaysWhy(t *testing.T) {
	_, err := Range(1, "192.0.2.1") // TEST-NET-1: not an address of this machine
	if err == nil {
		t.Fatal("a range on an address this machine lacks was handed out")
	}
	t.Log(err)
}
