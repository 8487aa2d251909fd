"""Tenant roles on a cluster: create them with their placement, limit, lock and remove them.

The owner runs all of this, inside the caller's transaction where one is taken. A role is
``t_`` + the tenant id's 32 hex digits, LOGIN, a member of ``tenant_base`` and nothing else,
with a CONNECTION LIMIT and a ``statement_timeout`` of its own (so one tenant cannot starve
the others); its password reaches PostgreSQL only as a SCRAM verifier computed here.

DDL takes no bind parameters: every name and verifier embedded below is checked first.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from app.models.placement import TenantPlacement
from app.tenancy.control.ddl import (
    CONTEXT_SCHEMA,
    GATEWAY_ROLE_PATTERN,
    TENANT_BASE_ROLE,
    TENANT_ROLE_PATTERN,
)
from app.tenancy.control.scram import is_scram_verifier, scram_sha256_verifier
from app.tenancy.errors import TenantUnavailable

_TERMINATE_WAIT_MS = 5000


_DRAIN_POLL = 0.05


# fullmatch, so a trailing newline (which $ alone would allow) is refused.
ROLE = re.compile(TENANT_ROLE_PATTERN)
GATEWAY_ROLE = re.compile(GATEWAY_ROLE_PATTERN)


@dataclass(frozen=True)
class RoleLimits:
    """Per-tenant role limits so one tenant cannot starve the others."""

    connection_limit: int
    statement_timeout_ms: int
    scram_iterations: int


def role_name(tenant_id: uuid.UUID) -> str:
    """The tenant's role: ``t_`` + 32 hex digits; ``current_tenant_id()`` parses it back."""
    return f"t_{tenant_id.hex}"


def place_tenant(
    connection: sa.Connection, tenant_id: uuid.UUID, verifier: str, limits: RoleLimits
) -> None:
    """On ``connection``'s cluster: the role (logging in with ``verifier``) and the placement."""
    place_tenants(connection, {tenant_id: verifier}, limits)


def place_tenants(
    connection: sa.Connection, verifiers: dict[uuid.UUID, str], limits: RoleLimits
) -> None:
    """:func:`place_tenant` for several tenants: one message of role statements, one INSERT.

    The owner runs it; each role gets the limits, ``tenant_base`` and nothing else, and the
    database's gateway becomes a member of it (the tenant may be served shared).
    """
    gateway = gateway_role(connection)
    statements = []
    for tenant_id, verifier in verifiers.items():
        role = role_name(tenant_id)
        # DDL takes no bind parameters; the verifier is embedded, so its alphabet is checked.
        if not is_scram_verifier(verifier):
            raise ValueError("refusing to embed a malformed SCRAM verifier")
        statements.append(
            f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS '
            f"INHERIT CONNECTION LIMIT {int(limits.connection_limit)} "
            f"PASSWORD '{verifier}' IN ROLE {TENANT_BASE_ROLE}; "
            f'GRANT "{role}" TO "{gateway}"; '
            + statement_timeout_sql(role, limits.statement_timeout_ms)
        )
    connection.exec_driver_sql("; ".join(statements))
    connection.execute(
        sa.insert(TenantPlacement).values([{"tenant_id": tenant_id} for tenant_id in verifiers])
    )


def remove_placement(
    data_engine: sa.Engine, tenant_id: uuid.UUID, *, drop_role: bool = True
) -> bool:
    """Remove the tenant from ``data_engine``'s cluster: its rows (by cascade) and its role.

    Idempotent; True if the cluster held the tenant. Sessions of the role are not ended
    here: callers make sure none is left (a dropped role's session fails oddly).
    ``drop_role=False`` when another database of the same server holds the tenant.
    """
    with data_engine.begin() as connection:
        return remove_placement_in(connection, tenant_id, drop_role=drop_role)


def remove_placement_in(
    connection: sa.Connection, tenant_id: uuid.UUID, *, drop_role: bool = True
) -> bool:
    """:func:`remove_placement` inside the caller's owner transaction."""
    # The owner cannot read tenant rows (FORCE RLS), but the cascade is not subject to it.
    removed = connection.execute(
        sa.delete(TenantPlacement).where(TenantPlacement.tenant_id == tenant_id)
    ).rowcount
    if drop_role:
        connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role_name(tenant_id)}"')
    return bool(removed)


def set_login(connection: sa.Connection, role: str, *, allowed: bool) -> bool:
    """Let ``role`` be used, or not, on ``connection``'s cluster; False if it has no such role.

    Both ways of reaching it at once: LOGIN or NOLOGIN for its own connections, and the
    gateway's membership for shared ones, so a suspended tenant fails closed even on a
    warm shared connection (SET ROLE is refused from the next transaction on).
    """
    if not ROLE.fullmatch(role):
        raise ValueError("refusing to embed a malformed role name")
    exists = connection.execute(
        sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).scalar()
    if exists:
        gateway = gateway_role(connection)
        membership = (
            f'GRANT "{role}" TO "{gateway}"' if allowed else f'REVOKE "{role}" FROM "{gateway}"'
        )
        connection.exec_driver_sql(
            f'ALTER ROLE "{role}" {"LOGIN" if allowed else "NOLOGIN"}; {membership}'
        )
    return bool(exists)


def gateway_role(connection: sa.Connection) -> str:
    """The gateway role of ``connection``'s database (migration 0003), checked safe to embed."""
    name = connection.execute(
        sa.text(f"SELECT gateway_role FROM {CONTEXT_SCHEMA}.context")
    ).scalar_one()
    if not GATEWAY_ROLE.fullmatch(name):
        raise ValueError("refusing to embed a malformed gateway role name")
    return str(name)


def limits_of_role(connection: sa.Connection, role: str) -> tuple[int, int | None] | None:
    """``role``'s CONNECTION LIMIT and statement_timeout in ms on ``connection``'s cluster."""
    row = connection.execute(
        sa.text(
            "SELECT rolconnlimit, "
            "(SELECT split_part(setting, '=', 2) FROM unnest(rolconfig) AS setting "
            " WHERE setting LIKE 'statement_timeout=%') AS timeout "
            "FROM pg_roles WHERE rolname = :role"
        ),
        {"role": role},
    ).one_or_none()
    if row is None:
        return None
    return row.rolconnlimit, None if row.timeout is None else int(row.timeout)


def end_sessions_of(
    connection: sa.Connection,
    role: str,
    *,
    grace: float,
    sleep: Callable[[float], object],
    clock: Callable[[], float],
) -> None:
    """Terminate the role's sessions: idle ones now, busy ones once ``grace`` is over.

    Done when two looks in a row, ``_DRAIN_POLL`` apart, find none: a session that passed
    its login check just before the role became NOLOGIN shows up a moment later.
    """
    started = clock()
    deadline = started + grace + 2 * _TERMINATE_WAIT_MS / 1000
    empty_looks = 0
    while True:
        # pg_stat_activity is a snapshot per transaction unless cleared.
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        sessions = connection.execute(
            sa.text("SELECT pid, state FROM pg_stat_activity WHERE usename = :role"),
            {"role": role},
        ).all()
        if not sessions:
            empty_looks += 1
            if empty_looks == 2:
                return
        else:
            empty_looks = 0
            now = clock()
            if now > deadline:
                raise TenantUnavailable(
                    f"sessions of role {role} did not end; delete the tenant again",
                    code="delete_incomplete",
                )
            ending = [pid for pid, state in sessions if state == "idle" or now - started >= grace]
            for pid in ending:
                connection.execute(
                    sa.text("SELECT pg_terminate_backend(:pid, :wait)"),
                    {"pid": pid, "wait": _TERMINATE_WAIT_MS},
                )
        sleep(_DRAIN_POLL)


def role_verifier(password: str, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier of ``password``, checked safe to embed in DDL."""
    verifier = scram_sha256_verifier(password, iterations)
    # DDL takes no bind parameters; the verifier is embedded, so its alphabet is checked.
    if not is_scram_verifier(verifier):
        raise ValueError("refusing to embed a malformed SCRAM verifier")
    return verifier


def statement_timeout_sql(role: str, timeout_ms: int) -> str:
    return f'ALTER ROLE "{role}" SET statement_timeout = {int(timeout_ms)}'
