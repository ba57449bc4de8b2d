//go:build tools

// Package harness pins the Kubernetes commands that the local test cluster
// runs: the control plane, and the kubelet and kube-proxy of its real node.
// `go build` builds them from this module's requirements.
package harness

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
