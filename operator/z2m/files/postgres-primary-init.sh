#!/bin/sh
# Runs once, when PostgreSQL initialises an empty data directory (mounted into
# /docker-entrypoint-initdb.d by z2m). It lets read replicas stream from this
# primary: a replication role, and pg_hba entries for it.
# Needs: POSTGRES_USER, PGDATA, REPLICATION_PASSWORD; psql on PATH.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v pw="$REPLICATION_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator')\gexec
SQL
cat >> "$PGDATA/pg_hba.conf" <<'HBA'
host replication replicator 0.0.0.0/0 scram-sha-256
host replication replicator ::/0 scram-sha-256
HBA
cat >> "$PGDATA/postgresql.conf" <<'CONF'
wal_level = replica
max_wal_senders = 10
wal_keep_size = 256MB
hot_standby = on
CONF
