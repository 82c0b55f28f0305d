#!/bin/sh
# Entry point of the z2m PostgreSQL primary. The first time (an empty data
# directory) it runs initdb with the app's role as owner, creates the app's
# database and a replication role, lets replicas and the app in by password, and
# turns on streaming; then, and on every later start, it runs postgres on the
# data as it is. Works with any image that has PostgreSQL's programs on PATH.
# Needs: POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD, REPLICATION_PASSWORD,
# PGDATA; runs as the data directory's owner. Extra arguments go to postgres.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  work=$(mktemp -d)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$work/pw"
  initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$work/pw" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  rm -f "$work/pw"
  cat >>"$PGDATA/pg_hba.conf" <<'HBA'
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
host replication replicator 0.0.0.0/0 scram-sha-256
host replication replicator ::/0 scram-sha-256
HBA
  cat >>"$PGDATA/postgresql.conf" <<'CONF'
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
hot_standby = on
CONF
  # A private socket and no TCP while the roles are made: nobody else gets in yet.
  pg_ctl -D "$PGDATA" -w -l "$work/log" \
    -o "-c listen_addresses='' -c unix_socket_directories=$work" start >/dev/null
  psql -v ON_ERROR_STOP=1 -h "$work" -U "$POSTGRES_USER" -d postgres -q \
    -v pw="$REPLICATION_PASSWORD" -v db="$POSTGRES_DB" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator')\gexec
SQL
  pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
  rm -rf "$work"
fi
# Each read replica streams through a slot of its own; a replica gone for long
# (demoted away) must not make the primary keep WAL until its disk is full.
exec postgres -D "$PGDATA" -c max_slot_wal_keep_size="${MAX_SLOT_WAL_KEEP_SIZE:-256MB}" "$@"
