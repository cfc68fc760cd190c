#!/usr/bin/env bash
# Builds the test control plane from the published Go modules into .cache/testbed/bin (ignored by git):
# kube-apiserver, kube-controller-manager and kube-scheduler from k8s.io/kubernetes v1.34.4 (with every
# k8s.io staging module replaced by its v0.34.4 release), etcd from go.etcd.io/etcd/server/v3 v3.6.4, and Kueue's
# controller manager from sigs.k8s.io/kueue v0.17.0.
# Go's module and build caches make a second run take seconds. kubectl and helm are the released binaries
# (hack/install-tools.py), not built here.
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
  k8s.io/kubernetes/cmd/kube-scheduler)
(cd "$root/tests/cluster/etcd" && go build -trimpath -ldflags="-s -w" -o "$bin/etcd" .)
"$bin/kube-apiserver" --version
"$bin/etcd" --version

# Kueue's controller manager, built from its published module (tests/cluster/kueue.py runs it): the real admission
# of queued Jobs. Built inside the module's own directory, with its go.mod (and its replace directives, if any).
kueue_dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json sigs.k8s.io/kueue@v0.17.0 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -n "$kueue_dir" ] || { echo "go mod download sigs.k8s.io/kueue@v0.17.0 gave no directory" >&2; exit 1; }
(cd "$kueue_dir" && go build -trimpath -ldflags="-s -w" -o "$bin/kueue-manager" ./cmd/kueue)

# Third-party CRDs, so the examples and the chart's optional objects meet the real schemas at --dry-run=server:
# Kueue (ClusterQueue, LocalQueue, ResourceFlavor), the Prometheus Operator (ServiceMonitor), Argo CD (Application),
# Flux (Kustomization) and KServe (LLMInferenceService), taken from their published Go modules (the Go module proxy serves the whole tree).
crds="$root/.cache/testbed/crds"
mkdir -p "$crds"
fetch() {  # module@version, then paths inside the module
  local module="$1"; shift
  local dir
  dir="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$dir" ] || { echo "go mod download $module gave no directory" >&2; exit 1; }
  for path in "$@"; do cp "$dir/$path" "$crds/"; chmod 644 "$crds/$(basename "$path")"; done
}
kueue_crds=""
for kind in admissionchecks clusterqueues cohorts localqueues multikueueclusters multikueueconfigs \
  provisioningrequestconfigs resourceflavors topologies workloadpriorityclasses workloads; do
  kueue_crds="$kueue_crds config/components/crd/bases/kueue.x-k8s.io_$kind.yaml"
done
# shellcheck disable=SC2086
fetch sigs.k8s.io/kueue@v0.17.0 $kueue_crds
fetch github.com/prometheus-operator/prometheus-operator@v0.85.0 \
  example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
fetch github.com/argoproj/argo-cd/v3@v3.1.0 manifests/crds/application-crd.yaml
fetch github.com/fluxcd/kustomize-controller@v1.6.0 config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml
# KServe's LLMInferenceService (what `kubetune serve` renders), without the conversion webhook its kustomization adds
fetch github.com/kserve/kserve@v0.17.0 config/crd/full/llmisvc/serving.kserve.io_llminferenceservices.yaml
ls "$crds"
