//go:build tools

// Package harness pins kube-router, whose network policy controller enforces
// NetworkPolicies on the local node with iptables and ipsets.
package harness

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
