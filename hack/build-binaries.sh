#!/usr/bin/env bash
# Build the clusters' binaries from the Go modules pinned under hack/tools/ into
# a cache outside the repo, keyed by those pins: the local control plane's
# (apiserver, controller-manager, scheduler, etcd, KWOK, metrics-server) and the
# kind node's (kubelet, kubeadm, kube-proxy, crictl, CoreDNS, local-path-provisioner,
# kind itself). A second run with the same pins does nothing. Prints the binary
# directory on stdout.
#
#   hack/build-binaries.sh            # build what is missing, print the dir
#   Z2M_CACHE=/some/dir hack/...      # cache root (default ~/.cache/z2m)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools="$here/tools"
k8s_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$tools/k8s/go.mod")
# Bump when the build recipe below changes in a way that changes the binaries.
recipe=2
key=$( (echo "$recipe"; cat "$tools"/*/go.mod "$tools"/*/go.sum) | sha256sum | cut -c1-16)
cache="${Z2M_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/z2m}"
bin="$cache/bin-$key"

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}

name() { # the binary go build makes of a package: its last element, a /vN suffix dropped
  local base=${1##*/}
  [[ $base =~ ^v[0-9]+$ ]] && { base=${1%/*}; base=${base##*/}; }
  echo "$base"
}

build() { # build <module dir> <ldflags> <package>...
  local dir=$1 ldflags=$2
  shift 2
  local missing=()
  for pkg in "$@"; do [ -x "$bin/$(name "$pkg")" ] || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "z2m: building$(for p in "${missing[@]}"; do printf ' %s' "$(name "$p")"; done) from hack/tools/$(basename "$dir")" >&2
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -pgo=off -ldflags "-s -w $ldflags" -o "$bin.partial/" "${missing[@]}")
  echo "z2m: built in $((SECONDS - start)) s" >&2
  for pkg in "${missing[@]}"; do mv "$bin.partial/$(name "$pkg")" "$bin/"; done
}

mkdir -p "$bin" "$bin.partial"
minor=${k8s_version#v1.}
minor=${minor%%.*}
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done
build "$tools/k8s" "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubeadm \
  k8s.io/kubernetes/cmd/kube-proxy
[ -x "$bin/etcd" ] || { build "$tools/etcd" "" go.etcd.io/etcd/server/v3 && mv "$bin/server" "$bin/etcd"; }
build "$tools/kwok" "" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
build "$tools/metrics-server" "" sigs.k8s.io/metrics-server/cmd/metrics-server
build "$tools/helm" "" helm.sh/helm/v3/cmd/helm
build "$tools/kind" "" sigs.k8s.io/kind sigs.k8s.io/cri-tools/cmd/crictl github.com/coredns/coredns
build "$tools/local-path" "" github.com/rancher/local-path-provisioner
rmdir "$bin.partial" 2>/dev/null || true

# KWOK's stage configs (pods Ready, node heartbeats, simulated CPU usage) ship in its module.
kwok_dir=$(cd "$tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
mkdir -p "$bin/kwok-stages"
for part in stage/node/fast stage/node/heartbeat-with-lease stage/pod/fast stage/volume/fast \
  metrics/usage metrics/resource; do
  for f in "$kwok_dir/kustomize/$part"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || cp -f "$f" "$bin/kwok-stages/"
  done
done
chmod -R u+w "$bin/kwok-stages"
# metrics-server's own RBAC and APIService, which kwokctl would otherwise download.
ms_dir=$(cd "$tools/metrics-server" && go list -m -f '{{.Dir}}' sigs.k8s.io/metrics-server)
rm -rf "$bin/metrics-server-manifests"
cp -r "$ms_dir/manifests/base" "$bin/metrics-server-manifests"
chmod -R u+w "$bin/metrics-server-manifests"
echo "$bin"
