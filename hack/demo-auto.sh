#!/usr/bin/env bash
# Auto-promotion end to end on the local control plane, in under three minutes:
# real PostgreSQL, two real sample_app processes, a real Prometheus scraping
# them, the z2m operator, and the sample app's load generator. Load rises and
# the stage climbs 1 -> 2 -> 3; load stops and it comes back 3 -> 2 -> 1.
# Prints `kubectl get sstage`, the decisions' reasons and the Events as it goes.
#
#   hack/demo-auto.sh        (make demo-auto)
#
# Z2M_DEMO_RPS (default 30) and Z2M_DEMO_LOAD_SECONDS (default 50) tune the load.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$("$root/hack/build-binaries.sh")
"$root/hack/cluster.sh" up
kubeconfig=${Z2M_CLUSTER_DIR:-$root/.cluster}/kubeconfig
"$bin/kubectl" --kubeconfig "$kubeconfig" apply --server-side -f "$root/crds" >/dev/null
"$bin/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Established \
  crd/scalingstages.z2m.dev >/dev/null
export Z2M_DEMO_KUBECTL="$bin/kubectl" Z2M_DEMO_KUBECONFIG="$kubeconfig"
exec "$root/.venv/bin/python" "$root/hack/demo_auto.py"
