//go:build tools

// Package harness pins runc, the OCI runtime the local node's containerd uses.
package harness

import _ "github.com/opencontainers/runc"
