package sidecar

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// The sidecar of a payments pod refuses an identity payments' policy does
// not name, though a status pod of the same service account admits it;
// the sidecar of a status pod admits it (status is open to the mesh).
func TestInboundDecisionIsThePods(t *testing.T) {
	shared := testutil.ID("/ns/default/sa/shared")
	res := resourcesOf(t, discoverytest.SharedPodsMesh, shared)
	intruder, frontend := testutil.ID("/ns/default/sa/intruder"), testutil.ID("/ns/default/sa/frontend")
	for _, tc := range []struct {
		pod             string
		intruderAllowed bool
	}{{"10.0.1.1", false}, {"10.0.1.2", true}, {"", false}} {
		var addrs []netip.Addr
		if tc.pod != "" {
			addrs = []netip.Addr{netip.MustParseAddr(tc.pod)}
		}
		v, err := xdsclient.NewViewForPod(shared, addrs, res)
		if err != nil {
			t.Fatal(err)
		}
		s := testSidecar(v)
		err = s.authorize(intruder, 8080)
		if (err == nil) != tc.intruderAllowed || (err != nil && !errors.Is(err, proxy.ErrDenied)) {
			t.Errorf("pod %q: intruder → 8080: %v, want allowed %v", tc.pod, err, tc.intruderAllowed)
		}
		if err := s.authorize(frontend, 8080); err != nil {
			t.Errorf("pod %q: frontend → 8080: %v", tc.pod, err)
		}
	}
}

func TestPodAddrs(t *testing.T) {
	ifaces := func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.ParseIP("::1"), Mask: net.CIDRMask(128, 128)},
			&net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)},
			&net.IPNet{IP: net.ParseIP("10.0.1.1").To4(), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	log := slog.New(slog.DiscardHandler)
	want := []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("fd00::1")}
	if got := podAddrs("10.0.1.1", ifaces, log); !slices.Equal(got, want) {
		t.Errorf("podAddrs = %v, want %v", got, want)
	}
	if got := podAddrs("not-an-ip", func() ([]net.Addr, error) { return nil, errors.New("no netlink") }, log); len(got) != 0 {
		t.Errorf("podAddrs with nothing valid = %v, want none", got)
	}
	if got := podAddrs("10.0.1.7", func() ([]net.Addr, error) { return nil, nil }, log); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.0.1.7")}) {
		t.Errorf("podAddrs from the env only = %v", got)
	}
}
