#!/usr/bin/env bash
# The real-pod cluster: kind. Where Docker runs, stock kind with its stock node image.
# Elsewhere (our machines: no Docker engine, no image registry) podman is kind's provider
# and the node image is assembled here from Debian packages and Go-built binaries, with
# the control-plane images preloaded; both are cached outside the repo, keyed by the pins.
#
#   hack/kind.sh up           # create the cluster (builds what is missing), print its kubeconfig
#   hack/kind.sh down         # delete it
#   hack/kind.sh node-image   # build the node image only, print its name
#   hack/kind.sh kubeconfig   # print the kubeconfig path
#   hack/kind.sh addons       # metrics-server and one CoreDNS, on a cluster made another way (pytest-kind)
#
# Z2M_KIND_CLUSTER names the cluster (default z2m), Z2M_KIND_DIR holds its kubeconfig.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

cluster=${Z2M_KIND_CLUSTER:-z2m}
state=${Z2M_KIND_DIR:-$z2m_root/.kind}
kubeconfig=$state/kubeconfig-$cluster
engine=$(z2m_engine)
if [ "$engine" = podman ]; then
  z2m_podman_env
  # kind mounts the host's /lib/modules into the node; some machines have none.
  [ -d /lib/modules ] || mkdir -p /lib/modules 2>/dev/null || sudo mkdir -p /lib/modules
fi

bin=$("$z2m_root/hack/build-binaries.sh")
kind=$bin/kind
k8s_version=$("$bin/kubeadm" version -o short)
# Bump when the recipe below or the files under hack/kind/ change the node image.
recipe=2
key=$( (echo "$recipe"; cat "$z2m_root"/hack/tools/{k8s,kind,local-path}/go.{mod,sum} \
  "$z2m_root"/hack/kind/*) | sha256sum | cut -c1-12)
node_image=localhost/z2m/kind-node:$k8s_version-$key

log() { echo "z2m: $*" >&2; }

# registry.k8s.io/<name>:<tag> for every image kubeadm asks for, one static binary each
# (kube-proxy on Debian, for iptables), plus metrics-server.
control_plane_images() {
  local ctx=$1 image name
  "$bin/kubeadm" config images list --kubernetes-version "$k8s_version" 2>/dev/null >"$ctx/images"
  # metrics-server under the name its own manifests give it.
  awk '$1 == "image:" {print $2}' "$bin"/metrics-server-manifests/*.yaml | sort -u >>"$ctx/images"
  gcc -static -O2 -o "$ctx/pause" "$(cd "$z2m_root/hack/tools/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  while read -r image; do
    name=${image##*/}
    name=${name%%:*}
    case $name in
      kube-proxy)
        cp "$bin/kube-proxy" "$ctx/"
        podman build -q --build-arg BASE="$z2m_local_base" -t "$image" \
          -f "$z2m_root/hack/kind/kube-proxy.Containerfile" "$ctx" >/dev/null
        ;;
      *)
        [ "$name" = pause ] || cp "$bin/$name" "$ctx/$name"
        printf 'FROM scratch\nENV PATH=/usr/local/bin:/usr/bin:/bin\nCOPY %s /usr/local/bin/%s\nCOPY %s /%s\nENTRYPOINT ["/%s"]\n' \
          "$name" "$name" "$name" "$name" "$name" >"$ctx/$name.Containerfile"
        [ "$name" = pause ] && echo 'USER 65535:65535' >>"$ctx/$name.Containerfile"
        podman build -q -t "$image" -f "$ctx/$name.Containerfile" "$ctx" >/dev/null
        ;;
    esac
  done <"$ctx/images"
}

# Stock kind's default StorageClass: local-path-provisioner, which makes each volume a
# world-writable directory on the node, so pods running as non-root can use it without
# a root init container. The manifest is kind's own (from its module), with our images:
# the provisioner built from its module, and the Debian base as its helper (sh, mkdir, rm).
local_path_storage() {
  local ctx=$1 kind_dir=$2 version
  version=$(cd "$z2m_root/hack/tools/local-path" && go list -m -f '{{.Version}}' github.com/rancher/local-path-provisioner)
  local provisioner=localhost/z2m/local-path-provisioner:$version helper=localhost/z2m/local-path-helper:bookworm
  mkdir -p "$ctx/kindfiles/kind/manifests"
  python3 - "$kind_dir/pkg/build/nodeimage/const_storage.go" "$provisioner" "$helper" \
    >"$ctx/kindfiles/kind/manifests/default-storage.yaml" <<'PY'
import re, sys
source, provisioner, helper = sys.argv[1:]
text = open(source).read()
text = text.replace("` + storageProvisionerImage + `", provisioner)
text = text.replace("` + storageHelperImage + `", helper)
print(re.search(r"const defaultStorageManifest = `(.*?)`", text, re.S).group(1))
PY
  cp "$bin/local-path-provisioner" "$ctx/"
  printf 'FROM scratch\nCOPY local-path-provisioner /usr/local/bin/local-path-provisioner\nENV PATH=/usr/local/bin\n' \
    >"$ctx/local-path.Containerfile"
  podman build -q -t "$provisioner" -f "$ctx/local-path.Containerfile" "$ctx" >/dev/null
  podman tag "$z2m_local_base" "$helper"
  printf '%s\n%s\n' "$provisioner" "$helper" >"$ctx/storage-images"
}

build_node_image() {
  podman image exists "$node_image" && return 0
  local start=$SECONDS ctx kind_dir preload
  ctx=$(mktemp -d)
  z2m_base_image
  log "assembling the kind node image $node_image"
  kind_dir=$(cd "$z2m_root/hack/tools/kind" && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
  cp -r "$kind_dir/images/base/files" "$ctx/kindfiles"
  chmod -R u+w "$ctx/kindfiles"
  mkdir "$ctx/bin"
  cp "$bin"/{kubelet,kubeadm,kubectl,crictl} "$ctx/bin/"
  cp "$z2m_root/hack/kind/10-bridge.conflist" "$ctx/"
  local_path_storage "$ctx" "$kind_dir"
  podman build -q --build-arg BASE="$z2m_local_base" --build-arg KUBERNETES_VERSION="$k8s_version" \
    --build-arg PAUSE_IMAGE="$("$bin/kubeadm" config images list --kubernetes-version "$k8s_version" 2>/dev/null | grep /pause:)" \
    -t "$node_image-base" -f "$z2m_root/hack/kind/node.Containerfile" "$ctx" >/dev/null
  log "building the control-plane images"
  control_plane_images "$ctx"
  cat "$ctx/storage-images" >>"$ctx/images"
  # Preload: containerd alone in a node container imports the images, then we commit it.
  # shellcheck disable=SC2046
  podman save -q --multi-image-archive -o "$ctx/images.tar" $(cat "$ctx/images")
  preload=z2m-preload-$$
  podman rm -f "$preload" >/dev/null 2>&1 || true
  podman run -d --privileged --name "$preload" --entrypoint /usr/bin/containerd "$node_image-base" >/dev/null
  until podman exec "$preload" test -S /run/containerd/containerd.sock; do
    podman container exists "$preload" || { log "preload container died"; return 1; }
    sleep 0.2
  done
  podman cp "$ctx/images.tar" "$preload:/images.tar"
  podman exec "$preload" ctr -n k8s.io images import --no-unpack /images.tar >/dev/null
  podman exec "$preload" rm /images.tar
  podman stop -t 5 "$preload" >/dev/null
  podman commit -q \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
    "$preload" "$node_image" >/dev/null
  podman rm -f "$preload" >/dev/null
  podman rmi "$node_image-base" >/dev/null 2>&1 || true
  rm -rf "$ctx"
  log "node image built in $((SECONDS - start)) s"
}

running() { "$kind" get clusters 2>/dev/null | grep -qx "$cluster"; }

up() {
  mkdir -p "$state"
  if running; then
    "$kind" get kubeconfig --name "$cluster" >"$kubeconfig"
  else
    local start=$SECONDS
    if [ "$engine" = docker ]; then
      "$kind" create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 120s >&2
    else
      build_node_image
      log "creating kind cluster $cluster"
      "$kind" create cluster --name "$cluster" --image "$node_image" \
        --config "$z2m_root/hack/kind/cluster.yaml" --kubeconfig "$kubeconfig" >&2
    fi
    install_metrics_server
    log "kind cluster $cluster up in $((SECONDS - start)) s"
  fi
  "$bin/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=180s >/dev/null
  echo "$kubeconfig"
}

# metrics-server from its module's manifests, told to trust the kubelet's self-signed cert.
install_metrics_server() {
  local k=("$bin/kubectl" --kubeconfig "$kubeconfig") dir
  dir=$(mktemp -d)
  cp -r "$bin/metrics-server-manifests" "$dir/base"
  cat >"$dir/kustomization.yaml" <<'YAML'
resources: [base]
patches:
  - target: {kind: Deployment, name: metrics-server}
    patch: |
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --kubelet-insecure-tls
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --metric-resolution=15s
YAML
  "${k[@]}" apply --server-side -k "$dir" >/dev/null
  rm -rf "$dir"
  # One node needs one CoreDNS, not kubeadm's two: the second one's 100m CPU request is
  # what a move to or from stage 5 (both job sources side by side) lacks on two cores.
  "${k[@]}" -n kube-system scale deployment coredns --replicas=1 >/dev/null
}

down() {
  if running; then "$kind" delete cluster --name "$cluster" >&2; fi
  rm -f "$kubeconfig"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  node-image)
    if [ "$engine" = podman ]; then build_node_image && echo "$node_image"; fi
    ;;
  addons) install_metrics_server ;;
  kubeconfig) echo "$kubeconfig" ;;
  *) echo "usage: $0 up|down|node-image|kubeconfig|addons" >&2; exit 2 ;;
esac
