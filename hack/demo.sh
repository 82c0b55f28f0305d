#!/usr/bin/env bash
# The main job on real pods: z2m installed in the kind cluster with its Helm chart,
# examples/shop.yaml at stage 1 with the sample app answering HTTP through its Service,
# then one promotion (1 -> 3), with a request before and after it and the data kept.
# Expects `make kind-up images` to have run (make demo does that).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$(hack/build-binaries.sh)
kubeconfig=$(hack/kind.sh kubeconfig)
ns=shop
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
ask() { # one HTTP request from inside the cluster, through the app's Service
  k -n "$ns" run "ask-$RANDOM" --image=z2m/sample-app:0.1.0 --restart=Never --rm -i --quiet \
    --command -- python -c "import httpx, sys; r = httpx.request(sys.argv[1], sys.argv[2], json={'name': 'demo'} if sys.argv[1] == 'POST' else None); print(r.status_code, r.text[:200])" "$@"
}

k apply --server-side -f crds/ >/dev/null
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
echo "== helm install z2m (operator image z2m/operator:0.1.0, watching namespace $ns)"
"$bin/helm" --kubeconfig "$kubeconfig" upgrade --install z2m charts/z2m -n "$ns" --skip-crds \
  --set "watchNamespaces={$ns}" --set "appNamespaces={$ns}" --wait --timeout 5m >/dev/null
k -n "$ns" get deploy z2m

echo; echo "== kubectl apply -f examples/shop.yaml (stage 1)"
k -n "$ns" apply --server-side -f examples/shop.yaml
k -n "$ns" wait --for=condition=Ready scalingstage/shop --timeout=600s
k -n "$ns" get pods -o wide
echo; echo "== a write and a read through the app's Service, at stage 1"
ask POST "http://shop-app/api/users"
ask GET "http://shop-app/api/users/1/posts"

echo; echo "== promote: kubectl patch sstage shop stage=3"
k -n "$ns" patch scalingstage shop --type merge -p '{"spec":{"stage":3}}'
k -n "$ns" wait --for=jsonpath='{.status.stage}'=3 scalingstage/shop --timeout=120s
k -n "$ns" wait --for=condition=Ready scalingstage/shop --timeout=600s
k -n "$ns" get scalingstage shop -o wide
k -n "$ns" get pods -o wide
echo; echo "== after the promotion: the user written at stage 1 is still in the primary"
k -n "$ns" exec shop-db-0 -c postgres -- psql -U app -d app -tAc "SELECT id, name FROM users"
echo; echo "== and the app answers through the load balancer; static files come through the edge cache"
ask POST "http://shop-app/api/users"
ask GET "http://shop-edge/static/app.css"
echo; echo "== the read replica streams from the primary"
k -n "$ns" exec shop-db-0 -c postgres -- psql -U app -d app -tAc \
  "SELECT application_name, state FROM pg_stat_replication"
echo; echo "== events"
k -n "$ns" get events --field-selector involvedObject.kind=ScalingStage \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
echo
echo "z2m: stage 3 is Ready on real pods. The kind cluster stays up; 'make kind-down' deletes it."
