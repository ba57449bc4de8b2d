//go:build tools

// Package harness pins kwok, the fake-node controller that makes Nodes and
// Pods of the local test cluster look real. `go build` builds it from this
// module's requirements.
package harness

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
