"""``flask tenancy check`` for user-scoped tables (``context_sql.user_scoped_ddl``).

A tenant table is user-scoped when it has the owner column (``created_by``) or a
``user_rows`` policy. Then the policy must exist, be RESTRICTIVE FOR ALL for
``tenant_base`` (a permissive one would widen the tenant's policy: any user of the tenant
could see every row), name ``current_app_user()`` and ``current_app_is_admin()`` in USING
and WITH CHECK and compare a column of the table (``created_by``, or another owner column
such as ``idempotency_keys.principal``); ``created_by`` defaults to ``current_app_user()``
(else a user's own inserts would be refused). The end-user
functions read the context only through the verifier, and PUBLIC may not run them.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.tenancy.control.context_sql import USER_COLUMN, USER_FUNCTIONS, USER_POLICY
from app.tenancy.control.ddl import CONTEXT_SCHEMA, TENANT_BASE_ROLE

_WANTED = ("current_app_user()", "current_app_is_admin()")


def user_scope_problems(connection: sa.Connection, tables: list[int]) -> tuple[int, list[str]]:
    """How many of the tenant ``tables`` (oids) are user-scoped, and what is wrong with them."""
    rows = connection.execute(
        sa.text(
            """
            SELECT c.oid::regclass::text AS name, p.polname IS NOT NULL AS has_policy,
                   coalesce(p.polpermissive, false) AS permissive, p.polcmd,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                         FROM unnest(p.polroles) AS r) AS roles,
                   pg_get_expr(p.polqual, p.polrelid) AS using_expr,
                   pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr,
                   a.attnum IS NOT NULL AS has_column,
                   pg_get_expr(d.adbin, d.adrelid) AS column_default,
                   EXISTS (SELECT FROM pg_depend dep
                           WHERE dep.classid = 'pg_policy'::regclass AND dep.objid = p.oid
                             AND dep.refobjid = c.oid AND dep.refobjsubid > 0) AS names_column
            FROM pg_class c
            LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = :policy
            LEFT JOIN pg_attribute a
              ON a.attrelid = c.oid AND a.attname = :column AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
            WHERE c.oid = ANY(:tables) AND (p.polname IS NOT NULL OR a.attnum IS NOT NULL)
            ORDER BY 1
            """
        ),
        {"policy": USER_POLICY, "column": USER_COLUMN, "tables": tables},
    ).all()
    problems = [f"table {row.name}: {problem}" for row in rows for problem in _table(row)]
    return len(rows), problems + _function_problems(connection)


def _table(row: sa.Row[object]) -> list[str]:
    if not row.has_policy:
        return [f"has {USER_COLUMN} but no {USER_POLICY} policy: every user sees every row"]
    found = []
    if row.permissive or row.polcmd != "*":
        found.append(f"policy {USER_POLICY} must be RESTRICTIVE FOR ALL")
    if not {TENANT_BASE_ROLE, "public"} & set(row.roles):
        found.append(f"policy {USER_POLICY} does not apply to {TENANT_BASE_ROLE}")
    # For ALL, PostgreSQL checks new rows with USING when WITH CHECK is absent.
    checked = row.check_expr or row.using_expr
    for clause, expression in (("USING", row.using_expr), ("WITH CHECK", checked)):
        missing = " and ".join(name for name in _WANTED if name not in (expression or ""))
        if missing:
            found.append(f"policy {USER_POLICY} {clause} does not reference {missing}")
    if not row.names_column:
        found.append(f"policy {USER_POLICY} compares no column of the table")
    if row.has_column and "current_app_user()" not in (row.column_default or ""):
        found.append(f"{USER_COLUMN} does not default to current_app_user()")
    return found


def _function_problems(connection: sa.Connection) -> list[str]:
    rows = connection.execute(
        sa.text(
            """
            SELECT p.oid::regprocedure::text AS name, p.prosrc,
                   has_function_privilege('public', p.oid, 'EXECUTE') AS public_may
            FROM pg_proc p WHERE p.oid::regprocedure::text = ANY(:names)
            """
        ),
        {"names": list(USER_FUNCTIONS)},
    ).all()
    found = {row.name: row for row in rows}
    problems = []
    for name in USER_FUNCTIONS:
        row = found.get(name)
        if row is None:
            problems.append(f"function {name} is missing (run `flask db upgrade`)")
        elif f"{CONTEXT_SCHEMA}.tenant_context_ok()" not in row.prosrc:
            problems.append(f"function {name} does not ask the verifier: its answer is forgeable")
        elif row.public_may:
            problems.append(f"function {name} is executable by PUBLIC")
    return problems
