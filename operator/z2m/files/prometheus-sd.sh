#!/bin/sh
# Kubernetes pod discovery for z2m's Prometheus, as a file_sd target list.
#
# Debian builds Prometheus without its Kubernetes service discovery (removed for its
# client library's dependencies, see the package's NEWS.Debian), so this sidecar does
# what that discovery's pod role does for us: it lists the pods of one namespace that
# match a label selector, through the Kubernetes API with the pod's ServiceAccount, and
# writes one target per container port named $SD_PORT_NAME, labelled with the pod's
# namespace, name and component. Prometheus re-reads the file when it changes.
#
# A failed listing keeps the last list: the targets it names go `down` if they are gone.
#
#   SD_SELECTOR   label selector of the pods to scrape (required)
#   SD_FILE       the target list to write (required)
#   SD_PORT_NAME  container port to scrape (default http)
#   SD_INTERVAL   seconds between listings (default 15)
#   SD_ONCE       1: list once and exit (for tests)
#   SD_API, SD_NAMESPACE, SD_TOKEN_FILE, SD_CA_FILE: default to the pod's in-cluster values
set -eu
: "${SD_SELECTOR:?}" "${SD_FILE:?}"
sa=/var/run/secrets/kubernetes.io/serviceaccount
port_name=${SD_PORT_NAME:-http}
interval=${SD_INTERVAL:-15}
api=${SD_API:-https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}}
namespace=${SD_NAMESPACE:-$(cat "$sa/namespace")}
token_file=${SD_TOKEN_FILE:-$sa/token}
ca_file=${SD_CA_FILE:-$sa/ca.crt}

# One target per scraped port of a pod that has an address and has not ended.
targets='[.items[]
  | select((.status.podIP // "") != "" and .status.phase != "Succeeded" and .status.phase != "Failed")
  | . as $pod
  | ($pod.status.podIP | if test(":") then "[\(.)]" else . end) as $ip
  | $pod.spec.containers[].ports[]? | select(.name == $name)
  | {targets: ["\($ip):\(.containerPort)"],
     labels: {namespace: $pod.metadata.namespace, pod: $pod.metadata.name,
              component: ($pod.metadata.labels["app.kubernetes.io/component"] // "")}}]'

list() {
  # The token is read every time: the kubelet rotates it.
  curl --silent --show-error --fail --max-time 10 --cacert "$ca_file" \
    --header "Authorization: Bearer $(cat "$token_file")" \
    --get --data-urlencode "labelSelector=$SD_SELECTOR" \
    "$api/api/v1/namespaces/$namespace/pods"
}

mkdir -p "$(dirname "$SD_FILE")"
while :; do
  if pods=$(list) && printf '%s' "$pods" | jq --arg name "$port_name" "$targets" >"$SD_FILE.tmp"; then
    mv "$SD_FILE.tmp" "$SD_FILE"  # atomic: Prometheus never reads half a file
  else
    echo "prometheus-sd: listing pods in $namespace failed; keeping the last target list" >&2
    [ "${SD_ONCE:-}" = 1 ] && exit 1
  fi
  [ "${SD_ONCE:-}" = 1 ] && break
  sleep "$interval"
done
