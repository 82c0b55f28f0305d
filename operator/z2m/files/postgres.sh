#!/bin/sh
# Entry point of every z2m PostgreSQL pod: the primary, the failover standby and the
# read replicas are members of one Patroni cluster, whose leader lock lives in the
# Kubernetes API (ConfigMaps named after PATRONI_SCOPE). Patroni starts PostgreSQL,
# makes the leader the primary, points the others at it, and promotes a standby when
# the leader's lock expires. Works with any image that has Patroni and PostgreSQL.
#
# This script only prepares the data directory, then hands over to Patroni:
# - The first member (Z2M_BOOTSTRAP=1, the primary's StatefulSet) runs initdb on an
#   empty directory, with the app's role as owner, the app's database and a
#   replication role, unless a leader already answers (then Patroni clones it).
# - Any other member starts Patroni only once a leader answers, so a copy can never
#   found the cluster. A kept copy (a pod back on its claim after a demotion) is
#   reused only if the leader still holds WAL from where the copy ends, through the
#   member's replication slot; a copy that can no longer catch up is emptied, and
#   Patroni clones the leader again.
#
# Needs: PGDATA, PATRONI_SCOPE, PATRONI_NAME (the pod's name), Z2M_LEADER (host of
# the leader's Service), POSTGRES_USER, POSTGRES_DB, PATRONI_SUPERUSER_PASSWORD,
# PATRONI_REPLICATION_PASSWORD; optional Z2M_NOFAILOVER / Z2M_NOSYNC (tags of read
# replicas), PG_PORT, PATRONI_PORT, Z2M_LEADER_PORT, Z2M_LEADER_API_PORT, PG_SOCKET_DIR,
# POD_IP. Patroni's own PATRONI_* variables pass through.
set -eu
: "${PG_PORT:=5432}" "${PATRONI_PORT:=8008}" "${Z2M_BOOTSTRAP:=0}"
: "${Z2M_LEADER_PORT:=$PG_PORT}" "${Z2M_LEADER_API_PORT:=$PATRONI_PORT}"
: "${Z2M_NOFAILOVER:=false}" "${Z2M_NOSYNC:=false}" "${POSTGRES_USER:=app}" "${POSTGRES_DB:=app}"
bin=$(dirname "$(command -v postgres)")
slot=$(printf '%s' "$PATRONI_NAME" | tr 'A-Z.-' 'a-z__')
leader_up() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
    "http://$Z2M_LEADER:$Z2M_LEADER_API_PORT/leader" 2>/dev/null
}
ask_leader() {
  PGPASSWORD="$PATRONI_REPLICATION_PASSWORD" psql -tAXq -v ON_ERROR_STOP=1 -c "$1" \
    "host=$Z2M_LEADER port=$Z2M_LEADER_PORT user=replicator dbname=postgres connect_timeout=5"
}

initdb_here() {
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  work=$(mktemp -d)
  printf '%s\n' "$PATRONI_SUPERUSER_PASSWORD" >"$work/pw"
  initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$work/pw" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
  rm -f "$work/pw"
  # A private socket and no TCP while the roles are made: nobody else gets in yet.
  pg_ctl -D "$PGDATA" -w -l "$work/log" \
    -o "-c listen_addresses='' -c unix_socket_directories=$work" start >/dev/null
  psql -v ON_ERROR_STOP=1 -h "$work" -U "$POSTGRES_USER" -d postgres -q \
    -v pw="$PATRONI_REPLICATION_PASSWORD" -v db="$POSTGRES_DB" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator')\gexec
SQL
  pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
  rm -rf "$work"
}

# The end of the WAL a kept copy holds, as an LSN: the end of its newest segment.
wal_end() {
  last=$(ls "$PGDATA/pg_wal" 2>/dev/null | grep -E '^[0-9A-F]{24}$' | sort | tail -n 1)
  [ -n "$last" ] || return 1
  hi=$(printf '%s' "$last" | cut -c9-16)
  lo=$(printf '%s' "$last" | cut -c17-24)
  end=$(((0x$hi << 32) + (0x$lo + 1) * 0x1000000))
  printf '%X/%X' "$((end >> 32))" "$((end & 0xFFFFFFFF))"
}

if [ "$Z2M_BOOTSTRAP" = 1 ]; then
  if [ ! -s "$PGDATA/PG_VERSION" ] && ! leader_up; then
    initdb_here
  fi
else
  until leader_up; do
    echo "z2m: no PostgreSQL leader answers at $Z2M_LEADER yet; waiting before joining" >&2
    sleep 2
  done
  if [ -s "$PGDATA/PG_VERSION" ]; then
    end=$(wal_end || echo 0/0)
    until keep=$(ask_leader "SELECT coalesce(bool_or(wal_status IN ('reserved', 'extended', 'unreserved') AND restart_lsn <= '$end'::pg_lsn), false) FROM pg_replication_slots WHERE slot_name = '$slot'"); do
      echo "z2m: the leader does not answer SQL yet; retrying" >&2
      sleep 2
    done
    if [ "$keep" != t ]; then
      echo "z2m: the leader no longer keeps the WAL after $end for slot $slot: this copy cannot catch up; emptying it so Patroni clones the leader" >&2
      find "$PGDATA" -mindepth 1 -delete
    fi
  fi
fi

config=$(mktemp)
cat >"$config" <<YAML
restapi:
  listen: 0.0.0.0:$PATRONI_PORT
  connect_address: ${POD_IP:-127.0.0.1}:$PATRONI_PORT
kubernetes:
  use_endpoints: false
postgresql:
  listen: 0.0.0.0:$PG_PORT
  connect_address: ${POD_IP:-127.0.0.1}:$PG_PORT
  data_dir: $PGDATA
  bin_dir: $bin
  pgpass: $(dirname "$config")/pgpass-$PATRONI_NAME
  parameters: {unix_socket_directories: '${PG_SOCKET_DIR:-/var/run/postgresql}'}
  authentication:
    superuser: {username: $POSTGRES_USER}
    replication: {username: replicator}
  pg_hba:
    - local all all trust
    - host all all 0.0.0.0/0 scram-sha-256
    - host all all ::/0 scram-sha-256
    - host replication replicator 0.0.0.0/0 scram-sha-256
    - host replication replicator ::/0 scram-sha-256
  create_replica_methods: [basebackup]
  basebackup: [{checkpoint: fast}]
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
tags:
  nofailover: $Z2M_NOFAILOVER
  nosync: $Z2M_NOSYNC
YAML
exec patroni "$config"
