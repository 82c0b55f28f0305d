#!/bin/sh
# Entry point of a z2m Redis Sentinel. Writes a fresh sentinel.conf that
# watches the primary named "z2m" (quorum 2) and runs redis-sentinel on it.
# Needs: PRIMARY_HOST, REDIS_PASSWORD; optional REDIS_PORT (6379),
# SENTINEL_PORT (26379), SENTINEL_DIR (/tmp), DOWN_AFTER_MS (5000), QUORUM (2).
set -eu
: "${REDIS_PORT:=6379}" "${SENTINEL_PORT:=26379}" "${SENTINEL_DIR:=/tmp}"
: "${DOWN_AFTER_MS:=5000}" "${QUORUM:=2}"
conf="$SENTINEL_DIR/sentinel.conf"
cat > "$conf" <<CONF
port $SENTINEL_PORT
dir $SENTINEL_DIR
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor z2m $PRIMARY_HOST $REDIS_PORT $QUORUM
sentinel auth-pass z2m $REDIS_PASSWORD
sentinel down-after-milliseconds z2m $DOWN_AFTER_MS
sentinel failover-timeout z2m 30000
sentinel parallel-syncs z2m 1
CONF
exec redis-sentinel "$conf" "$@"
