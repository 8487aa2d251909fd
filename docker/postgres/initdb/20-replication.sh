#!/usr/bin/env bash
# Runs once, after 10-tenantpool.sh, when the postgres container initialises an empty data
# volume. Only when REPLICATION_PASSWORD is set (compose's "standby" profile, see
# docs/operations.md "Failover and standbys"): it creates the role a hot standby streams as,
#
#   replicator      LOGIN REPLICATION, nothing else: no superuser, no database access beyond
#                   the replication protocol;
#
# and lets it in for replication from any address with a password (scram-sha-256), as the
# image's own line does for ordinary connections. The password comes from the environment
# through psql's \getenv, never a command line.
set -euo pipefail

if [[ -z "${REPLICATION_PASSWORD:-}" ]]; then
    exit 0
fi

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv replication_password REPLICATION_PASSWORD
SET password_encryption = 'scram-sha-256';
CREATE ROLE replicator LOGIN REPLICATION NOSUPERUSER NOCREATEROLE NOCREATEDB
    PASSWORD :'replication_password';
SQL

echo "host    replication    replicator    all    scram-sha-256" >> "$PGDATA/pg_hba.conf"
