#!/bin/sh
# Entry point of a z2m read replica: clone the primary with pg_basebackup the
# first time, then run PostgreSQL as a hot standby that streams from it through
# a replication slot of its own, so the primary keeps the WAL it has not had yet.
# A data directory kept on its PVC (a restart, or a demotion and a later
# promotion) is reused only if the primary still holds its slot's WAL; a copy
# that can no longer catch up (slot dropped, or lost past the primary's
# max_slot_wal_keep_size) is rebuilt.
# Needs: PRIMARY_HOST, PRIMARY_PORT, REPLICATION_PASSWORD, PGDATA, REPLICA_NAME
# (the slot's name; the pod's name); runs as the postgres user. Extra arguments
# are passed to postgres.
set -eu
: "${PRIMARY_PORT:=5432}" "${REPLICA_NAME:=$(hostname)}"
export PGPASSWORD="$REPLICATION_PASSWORD"
slot=$(printf '%s' "$REPLICA_NAME" | tr -c 'a-z0-9_' '_')
primary="host=$PRIMARY_HOST port=$PRIMARY_PORT user=replicator dbname=postgres connect_timeout=5"
ask() { psql "$primary" -v ON_ERROR_STOP=1 -tAXq -c "$1"; }
# What the primary says of our slot; waits until the primary answers at all, so
# a primary that is still starting never costs us a good copy.
until state=$(ask "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '$slot'"); do
  echo "z2m: primary $PRIMARY_HOST:$PRIMARY_PORT does not answer yet; retrying" >&2
  sleep 2
done
if [ -s "$PGDATA/PG_VERSION" ] && [ -f "$PGDATA/standby.signal" ]; then
  case "$state" in
    reserved | extended | unreserved) exec postgres -D "$PGDATA" -c hot_standby=on "$@" ;;
    *) echo "z2m: the primary no longer keeps the WAL of slot $slot (${state:-no slot}): this copy cannot catch up; rebuilding it" >&2 ;;
  esac
fi
rm -rf "${PGDATA:?}"/* 2>/dev/null || true
mkdir -p "$PGDATA"
chmod 700 "$PGDATA"
ask "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot' AND NOT active" >/dev/null
until pg_basebackup --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username=replicator \
    --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast --no-password \
    --slot="$slot" --create-slot; do
  echo "z2m: pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT failed; retrying" >&2
  rm -rf "${PGDATA:?}"/* 2>/dev/null || true
  ask "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot' AND NOT active" >/dev/null || true
  sleep 2
done
exec postgres -D "$PGDATA" -c hot_standby=on "$@"
