// Package freeport finds TCP ports for tests and benchmarks to listen on
// later, by number.
//
// A port the kernel picked for a listener that was then closed is in the
// ephemeral range, where any outgoing connection may take it before the
// test binds it again (CI saw exactly that: "bind: address already in
// use"). Ports from here are drawn below that range, so only another
// explicit listener can take one, and are never handed out twice in one
// process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// lowest is the lowest port drawn from.
const lowest = 20000

// ephemeralLow is the first port of the kernel's ephemeral range, from
// /proc/sys/net/ipv4/ip_local_port_range (32768 where it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lowest+1000 {
				return n
			}
		}
	}
	return 32768
}

// Ports returns n distinct ports, each free now on every one of hosts
// (127.0.0.1 when none is given).
func Ports(n int, hosts ...string) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		p, err := Range(1, hosts...)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// Range returns a base port such that base to base+n-1 are all free now on
// every one of hosts (127.0.0.1 when none is given).
func Range(n int, hosts ...string) (int, error) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	mu.Lock()
	defer mu.Unlock()
	high := ephemeralLow() - n
	var last error
next:
	for range 500 {
		base := lowest + rand.IntN(high-lowest)
		for p := base; p < base+n; p++ {
			if used[p] {
				continue next
			}
		}
		var held []net.Listener
		release := func() {
			for _, l := range held {
				l.Close()
			}
		}
		for p := base; p < base+n; p++ {
			for _, h := range hosts {
				l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(p)))
				if err != nil {
					last = err
					release()
					continue next
				}
				held = append(held, l)
			}
		}
		release()
		for p := base; p < base+n; p++ {
			used[p] = true
		}
		return base, nil
	}
	return 0, fmt.Errorf("no %d free ports in a row below %d on %s (last: %v)", n, high+n, strings.Join(hosts, ", "), last)
}
