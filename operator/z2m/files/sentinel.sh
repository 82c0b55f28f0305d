#!/bin/sh
# Entry point of a z2m Redis Sentinel, watching the primary named "z2m" (quorum 2).
# Sentinel rewrites its config as it learns (the current primary, the replicas, the
# other Sentinels, the failover epoch), so the config lives in SENTINEL_DIR, which
# the pod keeps across container restarts (an emptyDir): a restarted Sentinel
# carries on from what it knew. A new Sentinel asks, in turn, the other Sentinels
# (SENTINEL_PEERS), then the Redis pods (REDIS_PODS, whichever says role:master),
# who the primary is now, and only when nobody answers trusts PRIMARY_HOST.
# Needs: PRIMARY_HOST, REDIS_PASSWORD; optional REDIS_PORT (6379), SENTINEL_PORT
# (26379), SENTINEL_DIR (/tmp), DOWN_AFTER_MS (5000), QUORUM (2), SENTINEL_PEERS
# (host:port ...), REDIS_PODS (host:port ...). Extra arguments go to redis-sentinel.
set -eu
: "${REDIS_PORT:=6379}" "${SENTINEL_PORT:=26379}" "${SENTINEL_DIR:=/tmp}"
: "${DOWN_AFTER_MS:=5000}" "${QUORUM:=2}"
conf="$SENTINEL_DIR/sentinel.conf"
if [ -s "$conf" ] && grep -q '^sentinel monitor z2m ' "$conf"; then
  exec redis-sentinel "$conf" "$@"
fi
primary="$PRIMARY_HOST"
primary_port="$REDIS_PORT"
found=""
for peer in ${SENTINEL_PEERS:-}; do
  found=$(timeout 3 redis-cli -h "${peer%:*}" -p "${peer##*:}" --raw \
    SENTINEL get-master-addr-by-name z2m 2>/dev/null | grep . || true)
  [ "$(echo "$found" | wc -l)" = 2 ] && break
  found=""
done
if [ -z "$found" ]; then
  for pod in ${REDIS_PODS:-}; do
    if REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli -h "${pod%:*}" -p "${pod##*:}" --raw \
      INFO replication 2>/dev/null | grep -q '^role:master'; then
      found=$(printf '%s\n%s' "${pod%:*}" "${pod##*:}")
      break
    fi
  done
fi
if [ -n "$found" ]; then
  primary=$(echo "$found" | sed -n 1p)
  primary_port=$(echo "$found" | sed -n 2p)
fi
cat > "$conf.new" <<CONF
port $SENTINEL_PORT
dir $SENTINEL_DIR
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor z2m $primary $primary_port $QUORUM
sentinel auth-pass z2m $REDIS_PASSWORD
sentinel down-after-milliseconds z2m $DOWN_AFTER_MS
sentinel failover-timeout z2m 30000
sentinel parallel-syncs z2m 1
CONF
mv "$conf.new" "$conf"
exec redis-sentinel "$conf" "$@"
