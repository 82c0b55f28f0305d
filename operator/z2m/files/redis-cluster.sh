#!/bin/sh
# Entry point of a z2m Redis Cluster node (stage 6). Every pod runs redis-server in
# cluster mode, its node id and view of the cluster kept in REDIS_DIR/nodes.conf on
# its volume. Ordinal 0 also forms the cluster, once: when every node answers and
# none knows another yet, it runs `redis-cli --cluster create` with one replica per
# primary. A node that already knows others (a restart, a re-run) is left alone, so
# running this again never re-creates or reshards anything.
# A node that was in the cluster before (its nodes.conf knows others) meets every
# peer again at the address its name has now: pods come back with new IPs (at
# 5 -> 6 after a 6 -> 5, all six at once), and the peers' old IPs in nodes.conf
# would otherwise leave the cluster unable to find itself. Meeting a known node
# only updates its address; it never changes slots or roles.
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

address() { # the IP a name resolves to now (redis-cli and CLUSTER MEET want addresses)
  ip=$(getent hosts "$1" | awk '{print $1; exit}')
  echo "${ip:-$1}"
}

rejoin() { # every ordinal: a node that knew the cluster meets its peers at today's addresses
  me=$(echo "$CLUSTER_NODES" | tr -s ' ' '\n' | sed -n "$((ordinal + 1))p")
  until n=$(known "$me") && [ -n "$n" ]; do sleep 1; done
  [ "$n" = 1 ] && return 0  # never joined: ordinal 0 forms the cluster
  total=$(echo "$CLUSTER_NODES" | wc -w)
  tries=0
  while [ "$tries" -lt 150 ]; do
    # Done when this node has a live link to all of them: a state of "ok" alone may be
    # stale, since no majority is left to mark an unreachable peer failed.
    nodes=$(cli -h "${me%:*}" -p "${me##*:}" cluster nodes 2>/dev/null || true)
    linked=$(echo "$nodes" | awk '$8 == "connected" && $3 !~ /handshake|noaddr/' | wc -l)
    if [ "$linked" -eq "$total" ] && [ "$(echo "$nodes" | wc -l)" -eq "$total" ]; then
      return 0
    fi
    for node in $CLUSTER_NODES; do
      [ "$node" = "$me" ] && continue
      cli -h "${me%:*}" -p "${me##*:}" cluster meet "$(address "${node%:*}")" "${node##*:}" \
        >/dev/null 2>&1 || true
    done
    tries=$((tries + 1))
    sleep 2  # polling: the peers come back in any order
  done
  echo "redis-cluster: could not meet every peer again; the cluster needs a person"
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
      addresses="$addresses $(address "${node%:*}"):${node##*:}"
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
rejoin &
if [ "$ordinal" = 0 ]; then
  form &
fi
# The first wait returns early when a signal arrives; the second waits for the shutdown.
wait "$server" || true
wait "$server"
