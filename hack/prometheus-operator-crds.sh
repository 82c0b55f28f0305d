#!/usr/bin/env bash
# The Prometheus Operator's PodMonitor and PrometheusRule CRDs, for tests that check what
# z2m writes where that operator runs. They come from the operator's Go module, fetched
# once through the Go module proxy into the module cache (outside the repo) and checked
# against the checksum database like any module. Prints the two files' paths.
#
#   hack/prometheus-operator-crds.sh | xargs -n1 kubectl apply --server-side -f
set -euo pipefail

module=github.com/prometheus-operator/prometheus-operator
version=v0.85.0

export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}
# Outside any module, so that no go.mod of ours is read or changed.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir=$(cd "$tmp" && go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "z2m: go mod download $module@$version gave no directory" >&2; exit 1; }
for kind in podmonitors prometheusrules; do
  echo "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml"
done
