#!/bin/sh
# Entry point of a z2m Redis pod. Ordinal 0 starts as the primary; the others
# replicate from it. Sentinel may later promote another pod; a restarted pod
# asks Sentinel for the current primary first, so it never splits the brain.
# Needs: POD_NAME (…-N), PRIMARY_HOST, REDIS_PASSWORD; optional SENTINEL_HOST,
# REDIS_PORT (6379), PRIMARY_PORT (REDIS_PORT), REDIS_DIR (/data), ANNOUNCE_DOMAIN
# (the headless Service's domain: the pod announces POD_NAME.ANNOUNCE_DOMAIN, so
# Sentinel knows it by a stable name, not by an IP that changes when the pod is
# recreated). Extra arguments go to redis-server.
set -eu
: "${REDIS_PORT:=6379}" "${REDIS_DIR:=/data}"
ordinal="${POD_NAME##*-}"
primary="$PRIMARY_HOST"
primary_port="${PRIMARY_PORT:-$REDIS_PORT}"
announce="${ANNOUNCE_DOMAIN:+$POD_NAME.$ANNOUNCE_DOMAIN}"
if [ -n "${SENTINEL_HOST:-}" ]; then
  found=$(redis-cli -h "$SENTINEL_HOST" -p "${SENTINEL_PORT:-26379}" --raw \
    SENTINEL get-master-addr-by-name z2m 2>/dev/null || true)
  if [ -n "$found" ]; then
    primary=$(echo "$found" | sed -n 1p)
    primary_port=$(echo "$found" | sed -n 2p)
  fi
fi
set -- --port "$REDIS_PORT" --dir "$REDIS_DIR" --appendonly yes \
  --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" "$@"
if [ -n "$announce" ]; then
  set -- "$@" --replica-announce-ip "$announce"
fi
if [ -n "$announce" ] && [ "$primary:$primary_port" = "$announce:$REDIS_PORT" ]; then
  : # Sentinel still names this pod the primary (it has not failed it over): stay one.
elif [ "$ordinal" != "0" ] || [ "$primary:$primary_port" != "$PRIMARY_HOST:${PRIMARY_PORT:-$REDIS_PORT}" ]; then
  set -- "$@" --replicaof "$primary" "$primary_port"
fi
exec redis-server "$@"
