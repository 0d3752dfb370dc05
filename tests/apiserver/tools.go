//go:build tools

// The two programs scripts/build-apiserver.sh builds; imported here only so that `go mod tidy` keeps them.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
