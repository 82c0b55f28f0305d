#!/bin/sh
# Entry point of a z2m Redis Cluster node (stage 6). Every pod runs redis-server in
# cluster mode, its node id and view of the cluster kept in REDIS_DIR/nodes.conf on
# its volume. Ordinal 0 also forms the cluster, once: when every node answers and
# none knows another yet, it runs `redis-cli --cluster create` with one replica per
# primary. A node that already knows others (a restart, a re-run) is left alone, so
# running this again never re-creates or reshards anything.
# Needs: POD_NAME (…-N), REDIS_PASSWORD, CLUSTER_NODES (host:port of every node,
# space-separated, ordinal order); optional REDIS_PORT (6379), REDIS_DIR (/data),
# ANNOUNCE_DOMAIN (the node announces POD_NAME.ANNOUNCE_DOMAIN as its hostname),
# CLUSTER_REPLICAS (1). Extra arguments go to redis-server.
set -eu
: "${REDIS_PORT:=6379}" "${REDIS_DIR:=/data}" "${CLUSTER_REPLICAS:=1}"
ordinal="${POD_NAME##*-}"
set -- --port "$REDIS_PORT" --dir "$REDIS_DIR" --appendonly yes \
  --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
  --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" "$@"
if [ -n "${ANNOUNCE_DOMAIN:-}" ]; then
  set -- "$@" --cluster-announce-hostname "$POD_NAME.$ANNOUNCE_DOMAIN" \
    --cluster-preferred-endpoint-type hostname
fi

cli() { REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli "$@"; }

known() { # how many nodes $1 (host:port) knows, itself included; empty if it does not answer
  cli -h "${1%:*}" -p "${1##*:}" cluster info 2>/dev/null | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p'
}

form() { # ordinal 0 only: create the cluster once every node answers and none is joined
  while :; do
    alone=0 total=0 joined=0 addresses=""
    for node in $CLUSTER_NODES; do
      total=$((total + 1))
      n=$(known "$node")
      [ "$n" = 1 ] && alone=$((alone + 1))
      [ -n "$n" ] && [ "$n" != 1 ] && joined=1
      # redis-cli --cluster create wants addresses: resolve the stable names now.
      ip=$(getent hosts "${node%:*}" | awk '{print $1; exit}')
      addresses="$addresses ${ip:-${node%:*}}:${node##*:}"
    done
    if [ "$joined" = 1 ]; then
      echo "redis-cluster: nodes already joined; not forming it again"
      return 0
    fi
    if [ "$alone" = "$total" ]; then
      # shellcheck disable=SC2086 # one argument per address
      if cli --cluster create $addresses --cluster-replicas "$CLUSTER_REPLICAS" --cluster-yes; then
        echo "redis-cluster: formed from$addresses"
        return 0
      fi
    fi
    sleep 2  # polling the other pods: they start in any order
  done
}

redis-server "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
if [ "$ordinal" = 0 ]; then
  form &
fi
# The first wait returns early when a signal arrives; the second waits for the shutdown.
wait "$server" || true
wait "$server"
