package main

import "fmt"

// binary is one Go main package built into an image.
type binary struct {
	pkg  string // package path relative to the module root, "./cmd/ca"
	name string // file name in the image
}

// preset is one image this program knows how to build.
type preset struct {
	name string
	tag  string // default --tag
	// versionTag also tags the image NAME:<internal/version.Version> when
	// --tag is not given: the tag `tether install` and the chart default to.
	versionTag bool
	binaries   []binary
	binDir     string // where the binaries go
	iptables   bool   // add the iptables layer
	base       bool   // add the base layer (/etc/passwd, /etc/group, /tmp)
	user       string
	entrypoint []string
}

// presets are the images `build` knows, by name.
var presets = map[string]preset{
	// tether is the image of the Dockerfile's final stage: every binary, and
	// iptables for `tether-sidecar init` (the tether-init container).
	"tether": {
		name: "tether", tag: "tether:latest", versionTag: true,
		binaries: []binary{
			{"./cmd/ca", "tether-ca"}, {"./cmd/discovery", "tether-discovery"},
			{"./cmd/injector", "tether-injector"}, {"./cmd/sidecar", "tether-sidecar"},
			{"./cmd/tether", "tether"},
			{"./cmd/cni", "tether-cni"}, {"./cmd/cni-node", "tether-cni-node"},
		},
		binDir: "/usr/local/bin", iptables: true, base: true,
		user: "65532:65532", entrypoint: []string{"/usr/local/bin/tether"},
	},
	// tether-sample is the sample app of the cluster end-to-end test.
	"tether-sample": {
		name: "tether-sample", tag: "tether-sample:latest",
		binaries: []binary{{"./test/cluster/sampleapp", "tether-sample"}},
		binDir:   "/usr/local/bin", base: true,
		user: "65532:65532", entrypoint: []string{"/usr/local/bin/tether-sample"},
	},
	// pause is the kubelet's sandbox image, under the name kubelet and
	// containerd ask for by default.
	"pause": {
		name: "pause", tag: "registry.k8s.io/pause:3.10",
		binaries: []binary{{"./hack/image/pause", "pause"}},
		binDir:   "/", user: "65535:65535", entrypoint: []string{"/pause"},
	},
}

// lookupPreset returns the preset called name.
func lookupPreset(name string) (preset, error) {
	p, ok := presets[name]
	if !ok {
		return preset{}, fmt.Errorf("unknown image %q (known: pause, tether, tether-sample)", name)
	}
	return p, nil
}
