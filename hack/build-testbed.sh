#!/usr/bin/env bash
# Builds the test control plane from the published Go modules into .cache/testbed/bin (ignored by git):
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from k8s.io/kubernetes v1.34.4 (with every
# k8s.io staging module replaced by its v0.34.4 release), and etcd from go.etcd.io/etcd/server/v3 v3.6.4.
# Go's module and build caches make a second run take seconds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/testbed/bin"
mkdir -p "$bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
version="v1.34.4"
stamp="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
stamp="$stamp -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=34"
(cd "$root/tests/cluster/k8s" && go build -trimpath -ldflags="-s -w $stamp" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl)
(cd "$root/tests/cluster/etcd" && go build -trimpath -ldflags="-s -w" -o "$bin/etcd" .)
"$bin/kube-apiserver" --version
"$bin/etcd" --version
