#!/usr/bin/env bash
# compose's "standby" profile: a hot standby of the postgres service, streaming as
# "standby1" (its cluster_name, which synchronous_standby_names on the primary names).
#
# On an empty volume it copies the primary with pg_basebackup as the replicator role
# (docker/postgres/initdb/20-replication.sh), writing standby.signal and primary_conninfo
# (-R) and a replication slot of its own (-C -S), so the primary keeps the WAL it has not
# received yet. Then it runs PostgreSQL as the image does, as the postgres user.
#
# The password reaches pg_basebackup and the walreceiver through a password file (0600,
# in the data volume's parent, owned by postgres), never a command line or a log.
set -euo pipefail

: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD (docker/.env.example)}"
primary_host="${PRIMARY_HOST:-postgres}"
pgdata="${PGDATA:-/var/lib/postgresql/data}"
passfile=/var/lib/postgresql/.pgpass

mkdir -p "$pgdata"
chown postgres:postgres "$pgdata" /var/lib/postgresql
chmod 0700 "$pgdata"
umask 077
printf '%s:5432:*:replicator:%s\n' "$primary_host" "$REPLICATION_PASSWORD" > "$passfile"
chown postgres:postgres "$passfile"

if [[ ! -s "$pgdata/PG_VERSION" ]]; then
    gosu postgres pg_basebackup \
        --pgdata "$pgdata" \
        --dbname "host=$primary_host port=5432 user=replicator passfile=$passfile application_name=standby1" \
        --write-recovery-conf \
        --create-slot --slot standby1 \
        --wal-method=stream \
        --checkpoint=fast \
        --no-password
fi

exec gosu postgres postgres \
    -c cluster_name=standby1 \
    -c hot_standby=on \
    -c max_connections=200
