// Package version is the one version of Tether's binaries: the CLI, the
// control plane and the sidecar print it, the sidecar reports it to the
// control plane, and `tether install` defaults the image tag to it.
//
// Release builds set it with the linker:
//
//	go build -ldflags "-X github.com/tether-mesh/tether/internal/version.Version=0.2.0" ./cmd/tether
package version

import (
	"runtime/debug"
	"strings"
	"sync"
)

// Version is the release this build belongs to (semantic version, no
// leading "v"). Unreleased builds carry the next release with "-dev".
var Version = "0.1.0-dev"

// Revision is the VCS revision the build recorded (12 hex digits, with
// "-dirty" for a modified tree), or "" when it recorded none (go test,
// -buildvcs=false, a build outside a checkout).
var Revision = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev[:min(len(rev), 12)] + dirty
})

// String is Version with the revision as build metadata
// ("0.1.0-dev+0123456789ab"), at most 64 bytes, as the sidecar reports it.
func String() string {
	v := Version
	if r := Revision(); r != "" {
		v += "+" + r
	}
	return v[:min(len(v), 64)]
}

// Release is the release part of a reported version: String without
// its build metadata, for comparing a sidecar's version with the control
// plane's.
func Release(reported string) string {
	r, _, _ := strings.Cut(reported, "+")
	return r
}
