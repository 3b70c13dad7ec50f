// Command coredns is CoreDNS (github.com/coredns/coredns) with only the
// plugins the real-node cluster's DNS uses (hack/cluster writes its
// Corefile). The full build links every cloud provider's SDK; this is
// CoreDNS's documented way to build with a chosen set of plugins.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins, in the order of directives below.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is the order plugins run in, a subset of CoreDNS's own
// (core/dnsserver/zdirectives.go, generated from plugin.cfg).
var directives = []string{"bind", "ready", "errors", "log", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
