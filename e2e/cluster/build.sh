#!/usr/bin/env bash
# Builds the real Kubernetes components pinned by e2e/cluster/go (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kubelet, the CSI sidecars, csi-sanity, helm) from
# the Go module proxy into a cache outside the repo, keyed by the sha256 of go.sum:
#   ${RDS_CSI_K8S_CACHE:-/var/cache/rds-csi/k8s}/<sha256 of go.sum>/bin/
# A binary already there is not built again; the run builds only what is missing. The external-snapshotter
# CRDs (from its client module) are copied to <cache>/<hash>/crd/. Progress goes to stderr; the last
# line on stdout is the bin directory. Build flags: CGO_ENABLED=0, -p ${RDS_CSI_K8S_BUILD_P:-2}, -trimpath.
# GOMODCACHE and GOCACHE are Go's own (defaults outside the repo; set them to move them).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mod="$here/go"
log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "'go' is not in PATH: Go >= 1.26 is needed to build the Kubernetes components (go.mod says $(sed -n 's/^go //p' "$mod/go.mod")); install it (e.g. /usr/local/go/bin) and rerun"
command -v sha256sum >/dev/null 2>&1 || die "'sha256sum' (coreutils) is not in PATH"
[[ -f "$mod/go.mod" && -f "$mod/go.sum" ]] || die "missing $mod/go.mod or $mod/go.sum"

hash="$(sha256sum "$mod/go.sum" | cut -d' ' -f1)"
root="${RDS_CSI_K8S_CACHE:-/var/cache/rds-csi/k8s}/$hash"
bin="$root/bin"

# name|package|ldflags kind
targets=(
  "etcd|go.etcd.io/etcd/server/v3|plain"
  "kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|kube"
  "kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|kube"
  "kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|kube"
  "kubectl|k8s.io/kubernetes/cmd/kubectl|kube"
  "kubelet|k8s.io/kubernetes/cmd/kubelet|kube"
  "csi-provisioner|github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner|main.version"
  "csi-attacher|github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher|main.version"
  "csi-resizer|github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer|main.version"
  "csi-snapshotter|github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter|main.version"
  "snapshot-controller|github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller|main.version"
  "csi-sanity|github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity|main.VERSION"
  "helm|helm.sh/helm/v3/cmd/helm|helm"
)

missing=()
for t in "${targets[@]}"; do
  name="${t%%|*}"
  [[ -x "$bin/$name" ]] || missing+=("$t")
done
crd="$root/crd"
if (( ${#missing[@]} == 0 )) && [[ -f "$crd/.complete" ]]; then
  log "all ${#targets[@]} binaries present for go.sum $hash"
  echo "$bin"
  exit 0
fi

cd "$mod"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
mkdir -p "$bin" "$crd" || die "cannot create $bin (set RDS_CSI_K8S_CACHE to a writable directory)"
log "go: $(go version); GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"
log "downloading modules"
go mod download || die "go mod download failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"

# Version of the module that provides a package, and that module's commit time (for reproducible dates).
modver() { go list -f '{{.Module.Version}}' "$1"; }
modtime() { go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$1"; }

kver="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
[[ "$kver" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected k8s.io/kubernetes version $kver"
kdate="$(modtime k8s.io/kubernetes)"
kube_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $p.gitVersion=$kver -X $p.gitMajor=${BASH_REMATCH[1]} -X $p.gitMinor=${BASH_REMATCH[2]}"
  kube_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$kdate"
done

tmp="$(mktemp -d "$root/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
for t in "${missing[@]}"; do
  IFS='|' read -r name pkg kind <<<"$t"
  v="$(modver "$pkg")"
  case "$kind" in
    kube) ldflags="-s -w$kube_ldflags" ;;
    main.version) ldflags="-s -w -X main.version=$v" ;;
    main.VERSION) ldflags="-s -w -X main.VERSION=$v" ;;
    helm) ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
    *) ldflags="-s -w" ;;
  esac
  log "building $name ($pkg $v)"
  start=$SECONDS
  go build -p "${RDS_CSI_K8S_BUILD_P:-2}" -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/$name" "$pkg" \
    || die "go build of $name ($pkg $v) failed"
  mv -f "$tmp/$name" "$bin/$name"
  log "built $name in $((SECONDS - start))s"
done

if [[ ! -f "$crd/.complete" ]]; then
  src="$(go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)/config/crd"
  cp "$src"/*.yaml "$crd/" && chmod u+w "$crd"/*.yaml && rm -f "$crd/kustomization.yaml" && touch "$crd/.complete" \
    || die "could not copy the VolumeSnapshot CRDs from $src"
fi
log "done: $bin"
echo "$bin"
