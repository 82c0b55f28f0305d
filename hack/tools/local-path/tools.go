//go:build tools

// Package tools pins the kind node's storage provisioner: rancher's local-path-provisioner,
// which stock kind runs as its default StorageClass. hack/kind.sh builds its image.
package tools

import (
	_ "github.com/rancher/local-path-provisioner"
)
