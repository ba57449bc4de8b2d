//go:build tools

// Package harness pins the CNI plugins of the local node: a bridge with
// host-local addresses, loopback, and portmap for hostPorts.
package harness

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
