#!/usr/bin/env bash
# Runs once, as the PostgreSQL superuser, when the postgres container initialises an empty data
# volume (docker-entrypoint-initdb.d). It sets the server up as a managed service would be:
#
#   tenantpool      the owner role of APP_DATABASE_URL: LOGIN, CREATEROLE, not a superuser;
#                   owns the tenantpool database, runs the migrations, creates tenant roles.
#   pgbouncer_auth  the role PgBouncer logs in as to look up a connecting tenant's SCRAM
#                   verifier (auth_user / auth_query); it can do nothing else.
#   pgbouncer.get_auth(name)
#                   SECURITY DEFINER, owned by the superuser, because only a superuser can read
#                   pg_shadow. It answers for tenant roles (t_ + 32 hex digits) only, never for
#                   a superuser, the owner or pgbouncer_auth itself, and only pgbouncer_auth may
#                   call it. The owner cannot replace it: the pgbouncer schema is not theirs.
#
# Passwords come from the environment through psql's \getenv, so they are neither on a command
# line nor in this file; the server hashes them (scram-sha-256) before storing them, and
# statement logging is off while this runs.
set -euo pipefail

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv owner_password TENANTPOOL_OWNER_PASSWORD
\getenv pgbouncer_password PGBOUNCER_AUTH_PASSWORD
SET password_encryption = 'scram-sha-256';
CREATE ROLE tenantpool LOGIN NOSUPERUSER CREATEROLE NOCREATEDB PASSWORD :'owner_password';
CREATE ROLE pgbouncer_auth LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOINHERIT
    PASSWORD :'pgbouncer_password';
CREATE DATABASE tenantpool OWNER tenantpool;
-- The migrations revoke CONNECT from PUBLIC; PgBouncer's lookups need their own grant.
GRANT CONNECT ON DATABASE tenantpool TO pgbouncer_auth;

\connect tenantpool
CREATE SCHEMA pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;

CREATE FUNCTION pgbouncer.get_auth(p_usename name)
    RETURNS TABLE (usename name, passwd text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.usename, s.passwd
      FROM pg_catalog.pg_shadow AS s
     WHERE s.usename = p_usename
       AND s.usename ~ '^t_[0-9a-f]{32}$'
       AND NOT s.usesuper
       AND (s.valuntil IS NULL OR s.valuntil > now())
$$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(name) TO pgbouncer_auth;
SQL
