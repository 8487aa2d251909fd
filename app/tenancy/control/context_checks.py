"""``flask tenancy check``, the shared way (DESIGN section 3a): gateway, key and verifier.

From the catalogs, as the owner: the database's gateway role is NOINHERIT, LOGIN, without
any privileged attribute, table privilege or membership but tenant roles', and the owner
is a member of it (the verifier reads its backends' start); the signing key exists and
only the owner can read it; the verifier is SECURITY DEFINER, owned by the key's owner,
executable by ``tenant_base`` and by neither PUBLIC nor the gateway; the sequence that numbers
gateway backends is the owner's alone, and only the gateway may draw from it, through
``backend_binding()``, SECURITY DEFINER and owned like the key. (That they pin their
search_path is checked with every definer function.) That every policy calls it is
checked with the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from app.tenancy.control.context_sql import BACKEND_BINDING, NONCES
from app.tenancy.control.ddl import (
    CONTEXT_SCHEMA,
    GATEWAY_ROLE_PATTERN,
    TENANT_BASE_ROLE,
    TENANT_ROLE_PATTERN,
    VERIFIER,
)

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'"


def context_problems(connection: sa.Connection) -> list[str]:
    """Every problem of the shared way's pieces in the connected database."""
    if connection.scalar(sa.text(f"SELECT to_regclass('{CONTEXT_SCHEMA}.context')")) is None:
        return [f"table {CONTEXT_SCHEMA}.context: does not exist (run flask db upgrade)"]
    rows = connection.execute(
        sa.text(f"SELECT gateway_role, length(key) AS key_length FROM {CONTEXT_SCHEMA}.context")
    ).all()
    if len(rows) != 1 or rows[0].key_length != 32:
        return [f"table {CONTEXT_SCHEMA}.context: must hold one 32-byte signing key"]
    gateway = str(rows[0].gateway_role)
    return (
        _key_problems(connection, gateway)
        + _gateway_problems(connection, gateway)
        + _verifier_problems(connection, gateway)
        + _binding_problems(connection, gateway)
    )


def _key_problems(connection: sa.Connection, gateway: str) -> list[str]:
    row = connection.execute(
        sa.text(
            f"""
            SELECT has_table_privilege(:base, c.oid, 'SELECT') AS base,
                   has_table_privilege(:gateway, c.oid, 'SELECT') AS gateway,
                   EXISTS (SELECT FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner)))
                           AS a WHERE a.grantee = 0) AS public
            FROM pg_class c WHERE c.oid = to_regclass('{CONTEXT_SCHEMA}.context')
            """
        ),
        {"base": TENANT_BASE_ROLE, "gateway": gateway},
    ).one()
    readers = [
        name
        for name, may in (
            ("PUBLIC", row.public),
            (TENANT_BASE_ROLE, row.base),
            (gateway, row.gateway),
        )
        if may
    ]
    return [
        f"table {CONTEXT_SCHEMA}.context: {reader} may read the signing key" for reader in readers
    ]


def _gateway_problems(connection: sa.Connection, gateway: str) -> list[str]:
    row = connection.execute(
        sa.text(
            f"""
            SELECT r.rolname ~ :pattern AS named, r.rolinherit, r.rolcanlogin, r.rolsuper,
                   r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
                   pg_has_role(current_user, r.oid, 'USAGE') AS owner_member,
                   ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                         WHERE m.member = r.oid AND g.rolname !~ :tenant ORDER BY 1) AS others,
                   ARRAY(SELECT c.oid::regclass::text FROM pg_class c
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {_USER_SCHEMAS}
                           AND has_table_privilege(r.oid, c.oid,
                               'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                         ORDER BY 1) AS tables
            FROM pg_roles r WHERE r.rolname = :gateway
            """
        ),
        {"gateway": gateway, "pattern": GATEWAY_ROLE_PATTERN, "tenant": TENANT_ROLE_PATTERN},
    ).one_or_none()
    if row is None:
        return [f"gateway role {gateway}: does not exist (run flask db upgrade)"]
    found = [
        problem
        for problem, present in (
            ("is not named tp_gateway_<database>", not row.named),
            ("is INHERIT: it would hold every tenant's privileges", row.rolinherit),
            ("cannot log in", not row.rolcanlogin),
            ("is SUPERUSER", row.rolsuper),
            ("has BYPASSRLS", row.rolbypassrls),
            ("has CREATEROLE", row.rolcreaterole),
            ("has CREATEDB", row.rolcreatedb),
            (
                "the owner is not a member of it, so the verifier cannot read its backends",
                not row.owner_member,
            ),
        )
        if present
    ]
    if row.others:
        found.append(f"is a member of {', '.join(row.others)} (only tenant roles)")
    if row.tables:
        found.append(f"has privileges on {', '.join(row.tables)} (it must have none)")
    return [f"gateway role {gateway}: {problem}" for problem in found]


def _verifier_problems(connection: sa.Connection, gateway: str) -> list[str]:
    return _definer_problems(
        connection,
        VERIFIER,
        {
            "is not SECURITY DEFINER: it could not read the key": lambda row: not row.prosecdef,
            f"{TENANT_BASE_ROLE} may not execute it: every policy would fail": (
                lambda row: not row.base_may
            ),
            f"{gateway} may execute it": lambda row: row.gateway_may,
        },
        gateway,
    )


def _binding_problems(connection: sa.Connection, gateway: str) -> list[str]:
    """The numbers that bind gateway backends (migration 0010): only the owner draws them."""
    function = f"{CONTEXT_SCHEMA}.{BACKEND_BINDING}"
    found = _definer_problems(
        connection,
        function,
        {
            "is not SECURITY DEFINER: the gateway could not draw a number": (
                lambda row: not row.prosecdef
            ),
            f"{gateway} may not execute it: no shared connection could be bound": (
                lambda row: not row.gateway_may
            ),
        },
        gateway,
    )
    row = connection.execute(
        sa.text(
            """
            SELECT c.relowner = k.relowner AS owned_like_the_key,
                   ARRAY(SELECT r FROM unnest(ARRAY['public', :base, :gateway]) AS r
                         WHERE has_sequence_privilege(r, c.oid, 'USAGE, SELECT, UPDATE')) AS users
            FROM pg_class c, pg_class k
            WHERE c.oid = to_regclass(:sequence) AND k.oid = to_regclass(:key)
            """
        ),
        {
            "base": TENANT_BASE_ROLE,
            "gateway": gateway,
            "sequence": f"{CONTEXT_SCHEMA}.{NONCES}",
            "key": f"{CONTEXT_SCHEMA}.context",
        },
    ).one_or_none()
    sequence = f"sequence {CONTEXT_SCHEMA}.{NONCES}"
    if row is None:
        return [*found, f"{sequence}: does not exist (run flask db upgrade)"]
    if not row.owned_like_the_key:
        found.append(f"{sequence}: is not owned by the key's owner")
    found += [f"{sequence}: {user} may use it (only its owner may)" for user in row.users]
    return found


def _definer_problems(
    connection: sa.Connection,
    function: str,
    problems: dict[str, Callable[[sa.Row[Any]], bool]],
    gateway: str,
) -> list[str]:
    """``function``'s problems: each of ``problems`` that holds, and an owner other than the
    key's (a row with ``prosecdef``, ``base_may`` and ``gateway_may`` is given to each)."""
    row = connection.execute(
        sa.text(
            """
            SELECT p.prosecdef, p.proowner = c.relowner AS owned_like_the_key,
                   has_function_privilege(:base, p.oid, 'EXECUTE') AS base_may,
                   has_function_privilege(:gateway, p.oid, 'EXECUTE') AS gateway_may
            FROM pg_proc p, pg_class c
            WHERE p.oid = to_regprocedure(:function) AND c.oid = to_regclass(:key)
            """
        ),
        {
            "base": TENANT_BASE_ROLE,
            "gateway": gateway,
            "function": function,
            "key": f"{CONTEXT_SCHEMA}.context",
        },
    ).one_or_none()
    if row is None:
        return [f"function {function}: does not exist (run flask db upgrade)"]
    found = [problem for problem, present in problems.items() if present(row)]
    if not row.owned_like_the_key:
        found.append("is not owned by the key's owner")
    return [f"function {function}: {problem}" for problem in found]
