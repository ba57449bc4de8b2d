// Command etcd is the etcd server used by the local test cluster. It is
// built from this module so that the version is pinned by go.mod and the
// binary is compiled from source rather than downloaded.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
