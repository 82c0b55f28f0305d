#!/usr/bin/env bash
# The main job, end to end on the local control plane: run the operator, apply
# examples/shop.yaml (stage 1), wait until it is Ready, and show what z2m made.
# Expects `make cluster-up` to have run (make demo does that).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$(hack/build-binaries.sh)
kubeconfig=.cluster/kubeconfig
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
ports=$(.venv/bin/python -c 'import socket
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
health=$(echo "$ports" | sed -n 1p)
metrics=$(echo "$ports" | sed -n 2p)

k apply --server-side -f crds/ >/dev/null
k wait --for=condition=Established crd/scalingstages.z2m.dev >/dev/null

echo "== starting the operator (log: .cluster/operator.log)"
.venv/bin/z2m run --kubeconfig "$kubeconfig" --bind 127.0.0.1 \
  --health-port "$health" --metrics-port "$metrics" >.cluster/operator.log 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; wait $operator 2>/dev/null || true' EXIT

echo "== kubectl apply -f examples/shop.yaml"
k apply --server-side -f examples/shop.yaml
k wait --for=condition=Ready scalingstage/shop --timeout=180s
echo
echo "== the ScalingStage"
k get scalingstage shop -o wide
echo
echo "== what z2m made for stage 1"
k get deployments,statefulsets,services,configmaps,persistentvolumeclaims,pods \
  -l app.kubernetes.io/part-of=shop -o wide
echo
echo "== conditions"
k get scalingstage shop -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'
echo
echo "== events"
k get events --field-selector involvedObject.kind=ScalingStage,involvedObject.name=shop \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
echo
echo "== the operator's own metrics"
curl -s "http://127.0.0.1:$metrics/metrics" | grep -E '^z2m_(reconciles_total|stage)' || true
echo
echo "z2m: stage 1 is Ready. Try: $bin/kubectl --kubeconfig $kubeconfig patch sstage shop --type merge -p '{\"spec\":{\"stage\":3}}'"
echo "z2m: the cluster stays up; 'make cluster-down' stops it."
