#!/bin/sh
# Entry point of a z2m read replica: clone the primary with pg_basebackup the
# first time, then run PostgreSQL as a hot standby that streams from it.
# A data directory left by an earlier promotion (kept on its PVC) is reused.
# Needs: PRIMARY_HOST, PRIMARY_PORT, REPLICATION_PASSWORD, PGDATA; runs as the
# postgres user. Extra arguments are passed to postgres.
set -eu
: "${PRIMARY_PORT:=5432}"
export PGPASSWORD="$REPLICATION_PASSWORD"
if [ ! -s "$PGDATA/PG_VERSION" ] || [ ! -f "$PGDATA/standby.signal" ]; then
  rm -rf "${PGDATA:?}"/* 2>/dev/null || true
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  until pg_basebackup --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username=replicator \
      --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast --no-password; do
    echo "z2m: primary $PRIMARY_HOST:$PRIMARY_PORT not ready for pg_basebackup; retrying" >&2
    rm -rf "${PGDATA:?}"/* 2>/dev/null || true
    sleep 2
  done
fi
exec postgres -D "$PGDATA" -c hot_standby=on "$@"
