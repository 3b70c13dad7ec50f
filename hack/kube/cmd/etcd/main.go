// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3), built
// here only for tests (internal/kubetest).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
