#!/usr/bin/env bash
# Install the Debian packages the tests and the demo need, if any is missing:
# PostgreSQL and Patroni, Redis (+ Sentinel), RabbitMQ, nginx, Prometheus and Alertmanager,
# curl and jq (the Prometheus pod's discovery), envsubst and openssl, Java and Maven
# (Kafka and OpenSearch from Maven Central, hack/maven.sh),
# started on loopback by the tests; podman, runc, CNI plugins and debootstrap for the
# kind cluster and our images where Docker is not running. Runs apt-get only when
# something is missing.
set -euo pipefail
declare -A want=(
  [/usr/lib/postgresql]=postgresql
  [/usr/bin/patroni]=patroni
  [/usr/bin/redis-server]=redis-server
  [/usr/bin/redis-sentinel]=redis-sentinel
  [/usr/sbin/rabbitmq-server]=rabbitmq-server
  [/usr/sbin/nginx]=nginx-light
  [/usr/bin/prometheus]=prometheus
  [/usr/bin/prometheus-alertmanager]=prometheus-alertmanager
  [/usr/bin/jq]=jq
  [/usr/bin/curl]=curl
  [/usr/bin/envsubst]=gettext-base
  [/usr/bin/openssl]=openssl
  [/usr/bin/podman]=podman
  [/usr/sbin/runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/sbin/debootstrap]=debootstrap
  [/usr/sbin/iptables]=iptables
  [/usr/include/stdio.h]=libc6-dev
  [/usr/bin/java]=openjdk-17-jre-headless
  [/usr/bin/mvn]=maven
)
missing=()
for path in "${!want[@]}"; do [ -e "$path" ] || missing+=("${want[$path]}"); done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "z2m: installing Debian packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install where an init system runs; the tests start their own.
for svc in postgresql patroni redis-server rabbitmq-server nginx prometheus prometheus-alertmanager; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
