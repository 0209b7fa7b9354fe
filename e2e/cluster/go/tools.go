//go:build tools

// Package tools pins the main packages that e2e/cluster/build.sh builds. It is never compiled into
// anything (the build tag keeps it out); importing the commands makes `go mod tidy` keep every module
// and package they need in go.mod and go.sum, so `go build <cmd>` works from this module.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"

	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"

	_ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
	_ "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"

	_ "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity"

	_ "helm.sh/helm/v3/cmd/helm"
)
