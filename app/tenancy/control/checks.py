"""``flask tenancy check``: prove from the catalogs that every tenant is isolated (DESIGN 8).

Read-only queries, run as the owner, on what the database says rather than on what the
migrations meant to do. Each finding is one line naming the object and what is wrong.

Tenant tables (any table with a ``tenant_id`` column): RLS enabled and forced; one
permissive ``tenant_isolation`` policy for ``tenant_base`` whose USING and WITH CHECK name
both the connected role (``current_tenant_id()`` or its body) and the request's tenant
(``app.tenant_id``) and the shared way's context term (``session_user`` or the verifier),
and no other permissive policy beside it; ``tenant_id`` NOT NULL,
cascading from ``tenant_placements`` (migration 0002) and leading an index; SELECT granted
to ``tenant_base``, and nothing granted that RLS does not cover (TRUNCATE, TRIGGER) or to
PUBLIC. Views over them
use ``security_invoker``; no materialized view holds their rows. References between them
pair ``tenant_id`` (``reference_checks``).

Roles: the tenant roles and ``tenant_base`` (``role_checks``).
SECURITY DEFINER functions pin ``search_path`` and are not executable by PUBLIC.

User-scoped tables (end users' own rows): ``user_checks``. The shared way's gateway, key
and verifier: ``context_checks``. A data cluster (a database
other than the control plane's) holds no secrets: its ``tenants`` and ``gateways`` are
empty. ``flask tenancy check`` runs the check on every database that ``flask db upgrade``
migrates.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from app.tenancy.control.context_checks import context_problems
from app.tenancy.control.ddl import (
    PLACEMENTS_TABLE,
    POLICY_NAME,
    TENANT_BASE_ROLE,
    TENANT_ROLE_PATTERN,
    VERIFIER,
)
from app.tenancy.control.reference_checks import reference_problems
from app.tenancy.control.role_checks import role_problems
from app.tenancy.control.user_checks import user_scope_problems

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'"
_INVOKER_ON = {"true", "on", "yes", "1"}


@dataclass(frozen=True)
class CheckResult:
    """Findings (empty when all is well) and how much was looked at."""

    problems: list[str]
    tenant_tables: int
    tenant_roles: int
    user_scoped_tables: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_isolation(connection: sa.Connection, *, control_plane: bool = True) -> CheckResult:
    """Every isolation problem of the connected database and its cluster's roles.

    ``control_plane=False`` for a data cluster, which must hold no ``tenants`` rows.
    """
    problems: list[str] = []
    if not control_plane:
        problems += _secret_problems(connection)
    tables = _tenant_tables(connection)
    for table in tables:
        problems += _table_problems(connection, table)
    problems += reference_problems(connection)
    user_scoped, user_problems = user_scope_problems(connection, [table.oid for table in tables])
    problems += user_problems
    problems += _view_problems(connection, [table.oid for table in tables])
    roles, found = role_problems(connection)
    problems += found
    problems += _definer_problems(connection)
    problems += context_problems(connection)
    return CheckResult(problems, len(tables), roles, user_scoped)


@dataclass(frozen=True)
class _Table:
    oid: int
    name: str
    rls: bool
    forced: bool
    attnum: int
    not_null: bool


def _tenant_tables(connection: sa.Connection) -> list[_Table]:
    rows = connection.execute(
        sa.text(
            f"""
            SELECT c.oid, c.oid::regclass::text AS name, c.relrowsecurity AS rls,
                   c.relforcerowsecurity AS forced, a.attnum, a.attnotnull AS not_null
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE a.attname = 'tenant_id' AND NOT a.attisdropped
              AND c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}
              AND c.oid IS DISTINCT FROM to_regclass('{PLACEMENTS_TABLE}')
            ORDER BY 2
            """
        )
    ).all()
    return [_Table(**row._mapping) for row in rows]


def _table_problems(connection: sa.Connection, table: _Table) -> list[str]:
    found = []
    if not table.rls:
        found.append("row level security is not enabled")
    if not table.forced:
        found.append("row level security is not forced (the owner would bypass it)")
    found += _policy_problems(connection, table)
    if not table.not_null:
        found.append("tenant_id is nullable")
    if not _cascades_from_placements(connection, table):
        found.append(
            "tenant_id has no foreign key to tenant_placements ON DELETE CASCADE "
            "(a removed tenant's rows would stay)"
        )
    leading = connection.scalar(
        sa.text("SELECT count(*) FROM pg_index WHERE indrelid = :oid AND indkey[0] = :attnum"),
        {"oid": table.oid, "attnum": table.attnum},
    )
    if not leading:
        found.append("no index starts with tenant_id")
    found += _grant_problems(connection, table)
    return [f"table {table.name}: {problem}" for problem in found]


def _policy_problems(connection: sa.Connection, table: _Table) -> list[str]:
    policies = connection.execute(
        sa.text(
            """
            SELECT p.polname, p.polpermissive, p.polcmd,
                   pg_get_expr(p.polqual, p.polrelid) AS using_expr,
                   pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr,
                   ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                         FROM unnest(p.polroles) AS r) AS roles
            FROM pg_policy p WHERE p.polrelid = :oid ORDER BY p.polname
            """
        ),
        {"oid": table.oid},
    ).all()
    found = []
    isolation = [policy for policy in policies if policy.polname == POLICY_NAME]
    if not isolation:
        found.append(f"has no {POLICY_NAME} policy")
    for policy in isolation:
        if not policy.polpermissive or policy.polcmd != "*":
            found.append(f"policy {POLICY_NAME} must be PERMISSIVE FOR ALL")
        if not {TENANT_BASE_ROLE, "public"} & set(policy.roles):
            found.append(f"policy {POLICY_NAME} does not apply to {TENANT_BASE_ROLE}")
        # For ALL, PostgreSQL checks new rows with USING when WITH CHECK is absent.
        clauses = {"USING": policy.using_expr, "WITH CHECK": policy.check_expr or policy.using_expr}
        for clause, expression in clauses.items():
            missing = _missing_references(expression or "")
            if missing:
                found.append(f"policy {POLICY_NAME} {clause} does not reference {missing}")
    for policy in policies:
        if policy.polname != POLICY_NAME and policy.polpermissive:
            found.append(
                f"permissive policy {policy.polname} widens {POLICY_NAME} "
                "(make it RESTRICTIVE or drop it)"
            )
    return found


def _missing_references(expression: str) -> str:
    # The connected role's tenant: current_tenant_id(), or its body spelled out (0011).
    wanted = (
        ("tenant_id",),
        ("current_tenant_id()", f"'{TENANT_ROLE_PATTERN}'"),
        ("'app.tenant_id'",),
        ("SESSION_USER",),
        (VERIFIER,),
    )
    missing = (names[0] for names in wanted if not any(name in expression for name in names))
    return " and ".join(missing)


def _cascades_from_placements(connection: sa.Connection, table: _Table) -> bool:
    count = connection.scalar(
        sa.text(
            """
            SELECT count(*) FROM pg_constraint
            WHERE conrelid = :oid AND contype = 'f' AND confdeltype = 'c'
              AND conkey = ARRAY[:attnum]::int2[]
              AND confrelid = to_regclass('tenant_placements')
            """
        ),
        {"oid": table.oid, "attnum": table.attnum},
    )
    return bool(count)


def _grant_problems(connection: sa.Connection, table: _Table) -> list[str]:
    row = connection.execute(
        sa.text(
            """
            SELECT has_table_privilege(:base, :oid, 'SELECT') AS can_select,
                   ARRAY(SELECT p FROM unnest(ARRAY['TRUNCATE', 'TRIGGER']) AS p
                         WHERE has_table_privilege(:base, :oid, p)) AS unsafe,
                   ARRAY(SELECT DISTINCT a.privilege_type
                         FROM pg_class c, aclexplode(c.relacl) AS a
                         WHERE c.oid = :oid AND a.grantee = 0 ORDER BY 1) AS public
            """
        ),
        {"oid": table.oid, "base": TENANT_BASE_ROLE},
    ).one()
    found = []
    if not row.can_select:
        found.append(f"{TENANT_BASE_ROLE} has no SELECT on it")
    if row.unsafe:
        found.append(
            f"{TENANT_BASE_ROLE} has {', '.join(row.unsafe)} on it, which row level security "
            "does not cover"
        )
    if row.public:
        found.append(f"PUBLIC has {', '.join(row.public)} on it")
    return found


def _view_problems(connection: sa.Connection, tenant_tables: list[int]) -> list[str]:
    """Views reading tenant tables, directly or through other views."""
    if not tenant_tables:
        return []
    rows = connection.execute(
        sa.text(
            """
            WITH RECURSIVE reads(oid) AS (
                SELECT unnest(CAST(:tables AS oid[]))
              UNION
                SELECT r.ev_class
                FROM pg_rewrite r
                JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                JOIN reads ON d.refclassid = 'pg_class'::regclass AND d.refobjid = reads.oid
                WHERE r.ev_class <> reads.oid
            )
            SELECT c.oid::regclass::text AS name, c.relkind, c.reloptions
            FROM pg_class c JOIN reads ON reads.oid = c.oid
            WHERE c.relkind IN ('v', 'm') ORDER BY 1
            """
        ),
        {"tables": tenant_tables},
    ).all()
    found = []
    for row in rows:
        if row.relkind == "m":
            found.append(
                f"materialized view {row.name}: holds tenant rows where row level security "
                "cannot protect them"
            )
        elif not _invoker(row.reloptions or []):
            found.append(
                f"view {row.name}: reads tenant tables without security_invoker "
                "(it would run with its owner's rights)"
            )
    return found


def _invoker(options: list[str]) -> bool:
    for option in options:
        name, _, value = option.partition("=")
        if name == "security_invoker":
            return value.lower() in _INVOKER_ON
    return False


def _secret_problems(connection: sa.Connection) -> list[str]:
    """A data cluster's ``tenants`` and ``gateways`` are empty: secrets are the control plane's."""
    found = []
    for table in ("tenants", "gateways"):
        if connection.scalar(sa.text(f"SELECT to_regclass('{table}')")) is None:
            continue
        held = connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
        if held:
            found.append(
                f"table {table}: holds {held} row(s) on a data cluster; secrets belong in the "
                "control plane only"
            )
    return found


def _definer_problems(connection: sa.Connection) -> list[str]:
    rows = connection.execute(
        sa.text(
            f"""
            SELECT p.oid::regprocedure::text AS name,
                   EXISTS (SELECT FROM unnest(p.proconfig) AS setting
                           WHERE setting LIKE 'search\\_path=%') AS pinned,
                   EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner)))
                           AS a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prosecdef AND {_USER_SCHEMAS}
            ORDER BY 1
            """
        )
    ).all()
    found = []
    for row in rows:
        if not row.pinned:
            found.append(f"SECURITY DEFINER function {row.name}: search_path is not pinned")
        if row.public:
            found.append(f"SECURITY DEFINER function {row.name}: PUBLIC may execute it")
    return found
