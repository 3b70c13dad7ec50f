//go:build !linux

package capture

import (
	"errors"
	"net/netip"
)

// PodIPv6 needs Linux; elsewhere it finds nothing.
func PodIPv6() ([]netip.Addr, error) { return nil, nil }

// IPv6Enabled needs Linux; elsewhere it is false.
func IPv6Enabled() bool { return false }

// AddDeliverySource6 needs Linux.
func AddDeliverySource6() error { return errors.New("adding ::6 to lo needs Linux") }
