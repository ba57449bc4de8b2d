//go:build tools

// Package harness pins the Kubernetes control-plane commands that the local
// test cluster runs. `go build` builds them from this module's requirements.
package harness

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
