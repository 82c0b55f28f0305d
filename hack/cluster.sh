#!/usr/bin/env bash
# The local control plane: real etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and metrics-server built from source, with KWOK faking the
# nodes (and their pods' readiness, volumes and CPU usage).
#
#   hack/cluster.sh up     start it; writes $Z2M_CLUSTER_DIR/kubeconfig
#   hack/cluster.sh down   stop every process it started
#
# Z2M_CLUSTER_DIR (default .cluster) holds its state; Z2M_CLUSTER_NAME names it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${Z2M_CLUSTER_DIR:-$root/.cluster}
name=${Z2M_CLUSTER_NAME:-z2m}
nodes=${Z2M_NODES:-3}
# Each fake node's capacity; a fleet benchmark of 1,000 stage-2 objects needs
# Z2M_NODE_PODS=800 Z2M_NODE_CPU=64 Z2M_NODE_MEMORY=1Ti.
node_pods=${Z2M_NODE_PODS:-110}
node_cpu=${Z2M_NODE_CPU:-32}
node_memory=${Z2M_NODE_MEMORY:-256Gi}
# ClusterIPs for Services: a /16 holds 1,000s of ScalingStages (the default /24, ~125 at stage 2).
service_range=${Z2M_SERVICE_RANGE:-10.0.0.0/16}
export KWOK_WORKDIR="$state/kwok"
kubeconfig="$state/kubeconfig"

up() {
  local bin
  bin=$("$root/hack/build-binaries.sh")
  mkdir -p "$state"
  if [ -f "$kubeconfig" ] && "$bin/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "z2m: cluster $name already up ($kubeconfig)" >&2
    return 0
  fi
  local start=$SECONDS
  # KWOK's stages: node heartbeats, pods to Running/Ready, PVCs bound, simulated CPU usage.
  local config="$state/kwok-config.yaml"
  : >"$config"
  for f in "$bin"/kwok-stages/*.yaml; do
    [ "$(basename "$f")" = storage-class.yaml ] && continue  # applied below, to the cluster
    { cat "$f"; printf '\n---\n'; } >>"$config"
  done
  "$bin/kwokctl" --name "$name" delete cluster --kubeconfig "$kubeconfig" >/dev/null 2>&1 || true
  # Nothing is downloaded: every binary and manifest comes from the local build.
  cat >>"$config" <<CONFIG
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  kubectlBinary: $bin/kubectl
  metricsServerManifests: [$bin/metrics-server-manifests]
CONFIG
  "$bin/kwokctl" --name "$name" -c "$config" create cluster \
    --runtime binary \
    --kubeconfig "$kubeconfig" \
    --etcd-binary "$bin/etcd" \
    --kube-apiserver-binary "$bin/kube-apiserver" \
    --kube-controller-manager-binary "$bin/kube-controller-manager" \
    --kube-scheduler-binary "$bin/kube-scheduler" \
    --kwok-controller-binary "$bin/kwok" \
    --metrics-server-binary "$bin/metrics-server" \
    --enable metrics-server \
    --extra-args "kube-apiserver=advertise-address=127.0.0.1" \
    --extra-args "kube-apiserver=endpoint-reconciler-type=none" \
    --extra-args "kube-apiserver=service-cluster-ip-range=$service_range" \
    --wait 120s >&2

  local kubectl=("$bin/kubectl" --kubeconfig "$kubeconfig")
  for i in $(seq 0 $((nodes - 1))); do
    local zone="zone-$((i % 3))"
    # Two regions over the three zones: zones 0 and 1 in region-a, zone 2 in region-b,
    # so stage 6 can place the app, read replicas and cache per region.
    local region="region-a"
    [ $((i % 3)) -eq 2 ] && region="region-b"
    "${kubectl[@]}" apply --server-side -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
    # metrics-server scrapes KWOK's simulated kubelet resource metrics here.
    metrics.k8s.io/resource-metrics-path: /metrics/nodes/kwok-node-$i/metrics/resource
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
    topology.kubernetes.io/zone: $zone
    topology.kubernetes.io/region: $region
spec: {}
status:
  allocatable: {cpu: "$node_cpu", memory: $node_memory, pods: "$node_pods"}
  capacity: {cpu: "$node_cpu", memory: $node_memory, pods: "$node_pods"}
NODE
  done
  "${kubectl[@]}" apply --server-side -f "$bin/kwok-stages/storage-class.yaml" >/dev/null
  "${kubectl[@]}" wait --for=condition=Ready node --all --timeout=60s >/dev/null
  echo "z2m: cluster $name up in $((SECONDS - start)) s; kubeconfig: $kubeconfig" >&2
}

down() {
  local bin
  bin=$("$root/hack/build-binaries.sh")
  if [ -d "$KWOK_WORKDIR" ]; then
    "$bin/kwokctl" --name "$name" delete cluster --kubeconfig "$kubeconfig" >&2 || true
  fi
  rm -f "$kubeconfig"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
