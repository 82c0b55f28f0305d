//go:build tools

// Package tools pins what the real-pod kind cluster is made of besides Kubernetes itself:
// kind, crictl and CoreDNS. hack/kind-image.sh builds them.
package tools

import (
	_ "github.com/coredns/coredns"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
	_ "sigs.k8s.io/kind"
)
