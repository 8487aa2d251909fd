"""The SQL of the signed context (DESIGN 3a, 6): its verifier and the end user's functions.

Every tenant statement of the service opens with its context (``serving/gateway.py``,
``ContextSigner``): the tenant, the end user (a JWT's ``sub``, empty for an API key), their
roles, whether they may see all of the tenant's rows, and an HMAC-SHA256 of all of it and of
the backend, under the database's key (``tp_private.context``), which only the owner reads.

``tp_private.tenant_context_ok()`` (SECURITY DEFINER) recomputes the signature and requires it
to open the client's message (``current_query()``), so that SQL injected into the message can
neither forge a context nor replay one read elsewhere; a claimed context that fails raises
SQLSTATE TPC01. The binding is ``<pid>:n<number>`` on a primary's gateway connection (a number
drawn for the backend from an owner-only sequence, see VERIFIER), ``<pid>:s<backend start>``
on a standby's (the owner, a member of the gateway role, can read its start) and ``<pid>:0``
on a tenant's own one, whose start only the tenant role sees.

``current_app_user()``, ``current_app_roles()`` and ``current_app_is_admin()`` give policies
the end user, verified: on either way of serving, injected SQL inside user U's request cannot
become user V. Without a verified context they answer "nobody": no user, no role, not admin.
"""

from __future__ import annotations

from typing import Protocol

from app.tenancy.control.ddl import CONTEXT_SCHEMA, TENANT_BASE_ROLE, check_identifiers

# As migration 0003 made it: the tenant and the backend only (kept for its downgrade).
VERIFIER_0003 = """
CREATE OR REPLACE FUNCTION {schema}.tenant_context_ok() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $verifier$
DECLARE
  tenant text := current_setting('app.tenant_id', true);
  signature text := current_setting('app.tenant_sig', true);
  started timestamptz;
BEGIN
  IF coalesce(signature, '') = '' THEN
    RETURN false;
  END IF;
  SELECT a.backend_start INTO started FROM pg_stat_get_activity(pg_backend_pid()) AS a;
  IF signature = encode({pgcrypto}.hmac(
         convert_to(coalesce(tenant, '') || ':' || pg_backend_pid() || ':'
                    || (extract(epoch FROM started) * 1000000)::bigint, 'UTF8'),
         (SELECT key FROM {schema}.context), 'sha256'), 'hex')
     AND starts_with(current_query(), 'SELECT set_config(''app.tenant_sig'', '''
                                      || signature || ''', true)')
  THEN
    RETURN true;
  END IF;
  RAISE EXCEPTION 'the tenant context of this transaction does not verify'
    USING ERRCODE = 'TPC01';
END
$verifier$
"""

# The verifier since migration 0006: the end user too, and a binding for either way of
# serving. ``-- gateway backend --`` is where a gateway connection's backend is named.
_VERIFIER_WITH_USERS = """
CREATE OR REPLACE FUNCTION {schema}.tenant_context_ok() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $verifier$
DECLARE
  signature text := current_setting('app.tenant_sig', true);
  backend text := '0';
  context {schema}.context%ROWTYPE;
BEGIN
  IF coalesce(signature, '') = '' THEN
    RETURN false;
  END IF;
  SELECT * INTO context FROM {schema}.context;
  IF session_user = context.gateway_role THEN
    -- gateway backend --
  END IF;
  IF signature = encode({pgcrypto}.hmac(convert_to(concat_ws(E'\\n',
         coalesce(current_setting('app.tenant_id', true), ''),
         coalesce(current_setting('app.user_id', true), ''),
         coalesce(current_setting('app.user_roles', true), ''),
         coalesce(current_setting('app.user_admin', true), ''),
         pg_backend_pid() || ':' || backend), 'UTF8'), context.key, 'sha256'), 'hex')
     AND starts_with(current_query(), 'SELECT set_config(''app.tenant_sig'', '''
                                      || signature || ''', true)')
  THEN
    RETURN true;
  END IF;
  RAISE EXCEPTION 'the tenant context of this transaction does not verify'
    USING ERRCODE = 'TPC01';
END
$verifier$
"""
_BACKEND_START = "(extract(epoch FROM a.backend_start) * 1000000)::bigint"

# As migration 0006 made it: a gateway backend named by its start time.
VERIFIER_0006 = _VERIFIER_WITH_USERS.replace(
    "-- gateway backend --",
    f"SELECT {_BACKEND_START} INTO backend FROM pg_stat_get_activity(pg_backend_pid()) AS a;",
)

NONCES = "backend_nonces"
"""The owner-only sequence, in the context schema, that numbers gateway backends (0010)."""

# Since migration 0010: on a primary, a gateway backend is named by a number drawn from
# NONCES, which only the owner can draw (``backend_binding()``) and which the backend keeps
# in its own memory (currval): no snapshot of every backend's status per statement. On a
# standby, where nothing can be drawn, by its start time as before.
VERIFIER = _VERIFIER_WITH_USERS.replace(
    "-- gateway backend --",
    f"""IF pg_is_in_recovery() THEN
      SELECT 's' || {_BACKEND_START} INTO backend
        FROM pg_stat_get_activity(pg_backend_pid()) AS a;
    ELSE
      -- SQLSTATE 55000 when this backend drew no number, or a DISCARD dropped it.
      backend := 'n' || currval('{{schema}}.{{nonces}}');
    END IF;""",
)

BACKEND_BINDING = "backend_binding()"
"""The function, in the context schema, a gateway connection calls on connect (0010)."""

# Executable by the gateway role only. Each call draws a new number, so SQL a tenant injects
# (after RESET ROLE) that calls it, or a DISCARD SEQUENCES, can only make the app's binding
# stale: the next statement fails, and the app binds the connection again and sends it once
# more (session.GatewayDialect). Nobody can make a backend hold another backend's number.
BACKEND_BINDING_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.backend_binding() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $binding$
DECLARE
  started bigint;
BEGIN
  IF pg_is_in_recovery() THEN
    SELECT {backend_start} INTO started FROM pg_stat_get_activity(pg_backend_pid()) AS a;
    RETURN pg_backend_pid() || ':' || 's' || started;  -- as the verifier spells it
  END IF;
  RETURN pg_backend_pid() || ':' || 'n' || nextval('{schema}.{nonces}');
END
$binding$
""".replace("{backend_start}", _BACKEND_START)

USER_FUNCTIONS = {
    "current_app_user()": (
        "text",
        "SELECT CASE WHEN {schema}.tenant_context_ok() "
        "THEN NULLIF(current_setting('app.user_id', true), '') END",
    ),
    "current_app_roles()": (
        "text[]",
        "SELECT CASE WHEN {schema}.tenant_context_ok() "
        "THEN string_to_array(NULLIF(current_setting('app.user_roles', true), ''), ',') "
        "ELSE '{{}}'::text[] END",
    ),
    "current_app_is_admin()": (
        "boolean",
        "SELECT coalesce({schema}.tenant_context_ok() "
        "AND current_setting('app.user_admin', true) = 'true', false)",
    ),
}
"""Name -> (type, body) of the end-user functions: SECURITY INVOKER, as current_tenant_id()."""

USER_COLUMN = "created_by"
USER_POLICY = "user_rows"
# A row of a user-scoped table is the user's who made it; API keys and the admin role see
# every row of the tenant. Sub-selects: evaluated once per statement, not per row.
USER_PREDICATE = "(SELECT current_app_is_admin()) OR {column} = (SELECT current_app_user())"


def user_function_ddl() -> list[str]:
    """CREATE the end-user functions, executable by tenant_base only."""
    statements = []
    for name, (returns, body) in USER_FUNCTIONS.items():
        statements += [
            f"CREATE OR REPLACE FUNCTION {name} RETURNS {returns} "
            "LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp "
            f"AS $$ {body.format(schema=CONTEXT_SCHEMA)} $$",
            f"REVOKE ALL ON FUNCTION {name} FROM PUBLIC",
            f"GRANT EXECUTE ON FUNCTION {name} TO {TENANT_BASE_ROLE}",
        ]
    return statements


def user_scoped_ddl(table: str, column: str = USER_COLUMN) -> list[str]:
    """Make ``table``'s rows belong to the end user who created them (``column``).

    The column is filled from the verified context on insert (NULL when an API key writes),
    and a RESTRICTIVE policy, on top of the tenant's, lets a JWT without the admin role
    (``APP_JWT_ADMIN_ROLE``) see and change only its own rows. ``flask tenancy check``
    requires such a policy to be restrictive: a permissive one would widen the tenant's.
    """
    check_identifiers(table, column)
    return [
        f"ALTER TABLE {table} ADD COLUMN {column} text DEFAULT current_app_user()",
        user_policy_ddl(table, column),
    ]


def user_policy_ddl(table: str, column: str = USER_COLUMN) -> str:
    """The RESTRICTIVE policy that shows a JWT without the admin role only its rows of ``table``.

    ``column`` holds the end user who made the row (``current_app_user()``, or ``''`` where
    the column is NOT NULL and an API key wrote it, as in ``idempotency_keys``).
    """
    check_identifiers(table, column)
    predicate = USER_PREDICATE.format(column=column)
    return (
        f"CREATE POLICY {USER_POLICY} ON {table} AS RESTRICTIVE FOR ALL TO {TENANT_BASE_ROLE} "
        f"USING ({predicate}) WITH CHECK ({predicate})"
    )


class _Operations(Protocol):
    def execute(self, sqltext: str) -> object: ...


def make_user_scoped(op: _Operations, table: str, column: str = USER_COLUMN) -> None:
    """Run :func:`user_scoped_ddl` through Alembic's ``op`` (after ``make_tenant_scoped``)."""
    for statement in user_scoped_ddl(table, column):
        op.execute(statement)
