"""``flask tenancy check``, roles: no tenant role can reach past its own rows.

No tenant role (``t_`` + 32 hex) is superuser, BYPASSRLS or CREATEROLE, owns anything, or
belongs to a role other than ``tenant_base``, to which each must belong; ``tenant_base``
has none of those attributes or memberships, nor access to ``tenants`` or
``tenant_placements``.

Read-only catalog queries, as the owner; one line per finding, naming the role.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.tenancy.control.ddl import TENANT_BASE_ROLE, TENANT_ROLE_PATTERN


def role_problems(connection: sa.Connection) -> tuple[int, list[str]]:
    """(number of tenant roles, findings about them and ``tenant_base``)."""
    roles, found = _tenant_role_problems(connection)
    return roles, _base_role_problems(connection) + found


def _base_role_problems(connection: sa.Connection) -> list[str]:
    row = connection.execute(
        sa.text(
            """
            SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole,
                   ARRAY(SELECT g.rolname FROM pg_auth_members m
                         JOIN pg_roles g ON g.oid = m.roleid
                         WHERE m.member = r.oid ORDER BY 1) AS groups,
                   ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                    'TRUNCATE']) AS p
                         WHERE to_regclass('tenants') IS NOT NULL
                           AND has_table_privilege(r.oid, 'tenants', p)) AS on_tenants,
                   ARRAY(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                    'TRUNCATE']) AS p
                         WHERE to_regclass('tenant_placements') IS NOT NULL
                           AND has_table_privilege(r.oid, 'tenant_placements', p))
                     AS on_placements
            FROM pg_roles r WHERE r.rolname = :base
            """
        ),
        {"base": TENANT_BASE_ROLE},
    ).one_or_none()
    if row is None:
        return [f"role {TENANT_BASE_ROLE}: does not exist (run the migrations)"]
    found = [
        attribute
        for attribute, present in (
            ("SUPERUSER", row.rolsuper),
            ("BYPASSRLS", row.rolbypassrls),
            ("CREATEROLE", row.rolcreaterole),
        )
        if present
    ]
    if row.groups:
        found.append(f"member of {', '.join(row.groups)}")
    if row.on_tenants:
        found.append(f"has {', '.join(row.on_tenants)} on tenants")
    if row.on_placements:
        found.append(f"has {', '.join(row.on_placements)} on tenant_placements")
    return [f"role {TENANT_BASE_ROLE}: {problem}" for problem in found]


def _tenant_role_problems(connection: sa.Connection) -> tuple[int, list[str]]:
    """(number of tenant roles, findings); set-based, for clusters with many tenants."""
    total = connection.scalar(
        sa.text("SELECT count(*) FROM pg_roles WHERE rolname ~ :pattern"),
        {"pattern": TENANT_ROLE_PATTERN},
    )
    rows = connection.execute(
        sa.text(
            """
            SELECT * FROM (
                SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole,
                       EXISTS (SELECT FROM pg_shdepend d
                               WHERE d.refclassid = 'pg_authid'::regclass
                                 AND d.refobjid = r.oid AND d.deptype = 'o') AS owns,
                       EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                               WHERE m.member = r.oid AND g.rolname = :base) AS in_base,
                       ARRAY(SELECT g.rolname FROM pg_auth_members m
                             JOIN pg_roles g ON g.oid = m.roleid
                             WHERE m.member = r.oid AND g.rolname <> :base
                             ORDER BY 1) AS others
                FROM pg_roles r WHERE r.rolname ~ :pattern
            ) AS roles
            WHERE rolsuper OR rolbypassrls OR rolcreaterole OR owns OR NOT in_base
               OR cardinality(others) > 0
            ORDER BY rolname
            """
        ),
        {"pattern": TENANT_ROLE_PATTERN, "base": TENANT_BASE_ROLE},
    ).all()
    found = []
    for row in rows:
        for attribute, present in (
            ("is SUPERUSER", row.rolsuper),
            ("has BYPASSRLS", row.rolbypassrls),
            ("has CREATEROLE", row.rolcreaterole),
            ("owns objects", row.owns),
            (f"is not a member of {TENANT_BASE_ROLE}", not row.in_base),
        ):
            if present:
                found.append(f"tenant role {row.rolname}: {attribute}")
        if row.others:
            found.append(f"tenant role {row.rolname}: is a member of {', '.join(row.others)}")
    return total or 0, found
