"""Tenant lifecycle: create, rotate credentials or API key, suspend, resume, delete.

The admin API and the ``flask tenants`` commands both call these functions. Each change is
one owner transaction that also queues the tenant's change event (``events.notify``), so
every worker hears of it exactly when, and only if, it is committed; one audit line follows
each committed change.

The role's password is random and reaches PostgreSQL only as a SCRAM-SHA-256 verifier
computed here, so no server log can show it. Rotating it changes the role and the stored
ciphertext in the same transaction: a login never sees one without the other. The role's
limits (CONNECTION LIMIT and statement_timeout, so one tenant cannot starve the others)
default from config and can be set per tenant at creation (``limits=``) or later
(``set_role_limits``); they live on the role itself, where PostgreSQL enforces them.

Privileges: the owner is a non-superuser with CREATEROLE, as on managed services. To end a
deleted tenant's sessions it makes itself a member of the tenant's role inside the deleting
transaction (``pg_terminate_backend`` allows members of the backend's role), and the
membership goes with the role when it is dropped. CREATEROLE allows that grant on
PostgreSQL 15; from 16 on, the creator of a role holds ADMIN OPTION on it, which does.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import Keyring, tenant_aad
from app.models.tenant import Tenant, TenantStatus
from app.tenancy.audit import audit
from app.tenancy.ddl import TENANT_BASE_ROLE
from app.tenancy.errors import TenantNameTaken, TenantNotFound, TenantUnavailable
from app.tenancy.events import EventKind, TenantEvent, notify
from app.tenancy.resolve import generate_api_key, hash_api_key
from app.tenancy.scram import generate_password, is_scram_verifier, scram_sha256_verifier

DEFAULT_DELETE_GRACE = 2.0
"""Seconds a deleted tenant's running queries get to finish before their sessions end."""

_TERMINATE_WAIT_MS = 5000
_DRAIN_POLL = 0.05
_ROLE = re.compile(r"\At_[0-9a-f]{32}\Z")


@dataclass(frozen=True)
class RoleLimits:
    """Per-tenant role limits so one tenant cannot starve the others."""

    connection_limit: int
    statement_timeout_ms: int
    scram_iterations: int


@dataclass(frozen=True)
class ProvisionedTenant:
    """A tenant and its new API key, which is shown once and never stored."""

    id: uuid.UUID
    name: str
    api_key: str


@dataclass(frozen=True)
class TenantInfo:
    """What an administrator may see of a tenant: no password, ciphertext or key hash."""

    id: uuid.UUID
    name: str
    status: str
    cluster: str
    db_user: str
    key_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


_INFO_COLUMNS = (
    Tenant.id,
    Tenant.name,
    Tenant.status,
    Tenant.cluster,
    Tenant.db_user,
    Tenant.key_id,
    Tenant.created_at,
    Tenant.updated_at,
)


def role_name(tenant_id: uuid.UUID) -> str:
    """The tenant's role: ``t_`` + 32 hex digits; ``current_tenant_id()`` parses it back."""
    return f"t_{tenant_id.hex}"


def get_tenant(control_engine: sa.Engine, tenant_id: uuid.UUID) -> TenantInfo:
    """The tenant; raises TenantNotFound."""
    with control_engine.connect() as connection:
        row = connection.execute(
            sa.select(*_INFO_COLUMNS).where(Tenant.id == tenant_id)
        ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    return TenantInfo(**row._mapping)


def find_tenant_by_name(control_engine: sa.Engine, name: str) -> TenantInfo | None:
    with control_engine.connect() as connection:
        row = connection.execute(sa.select(*_INFO_COLUMNS).where(Tenant.name == name)).one_or_none()
    return None if row is None else TenantInfo(**row._mapping)


def list_tenants(
    control_engine: sa.Engine, *, page: int, page_size: int, status: str | None = None
) -> tuple[list[TenantInfo], int]:
    """One page of tenants, oldest first, and the total count."""
    conditions = [] if status is None else [Tenant.status == status]
    with control_engine.connect() as connection:
        total = connection.scalar(sa.select(sa.func.count()).select_from(Tenant).where(*conditions))
        rows = connection.execute(
            sa.select(*_INFO_COLUMNS)
            .where(*conditions)
            .order_by(Tenant.created_at, Tenant.id)
            .limit(page_size)
            .offset((page - 1) * page_size)
        ).all()
    return [TenantInfo(**row._mapping) for row in rows], total or 0


def create_tenant(
    control_engine: sa.Engine,
    keyring: Keyring,
    name: str,
    limits: RoleLimits,
    *,
    cluster: str = "default",
    actor: str = "system",
) -> ProvisionedTenant:
    """Create the tenant's role and row in one transaction and return its API key.

    Raises TenantNameTaken if another tenant has ``name``.
    """
    return create_tenants(control_engine, keyring, [name], limits, cluster=cluster, actor=actor)[0]


def create_tenants(
    control_engine: sa.Engine,
    keyring: Keyring,
    names: Sequence[str],
    limits: RoleLimits,
    *,
    cluster: str = "default",
    actor: str = "system",
) -> list[ProvisionedTenant]:
    """Create several tenants in one transaction: all of them, or none.

    Two round trips whatever the count (the role statements in one message, the rows in
    one INSERT), so seeding a thousand tenants does not cost a thousand commits. Raises
    TenantNameTaken if a name is taken.
    """
    tenants = [ProvisionedTenant(uuid.uuid4(), name, generate_api_key()) for name in names]
    if not tenants:
        return []
    statements = []
    rows = []
    for tenant in tenants:
        role = role_name(tenant.id)
        password = generate_password()
        statements.append(
            f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS '
            f"INHERIT CONNECTION LIMIT {int(limits.connection_limit)} "
            f"PASSWORD '{_verifier(password, limits.scram_iterations)}' "
            f"IN ROLE {TENANT_BASE_ROLE}; "
            + _statement_timeout_sql(role, limits.statement_timeout_ms)
        )
        rows.append(
            {
                "id": tenant.id,
                "name": tenant.name,
                "db_user": role,
                "db_password_encrypted": keyring.encrypt(password, tenant_aad(tenant.id, role)),
                "key_id": keyring.active_key_id,
                "api_key_hash": hash_api_key(tenant.api_key),
                "cluster": cluster,
            }
        )
    try:
        with control_engine.begin() as connection:
            connection.exec_driver_sql("; ".join(statements))
            connection.execute(sa.insert(Tenant).values(rows))
            for tenant in tenants:
                notify(connection, TenantEvent(EventKind.CREATED, tenant.id))
    except sa.exc.IntegrityError as error:
        # ids and roles come from fresh uuid4s: a unique violation is a name.
        if getattr(error.orig, "pgcode", None) == "23505":
            taken = ", ".join(repr(name) for name in names)
            raise TenantNameTaken(f"a tenant named {taken} exists already") from None
        raise
    for tenant in tenants:
        audit("created", tenant.id, actor=actor, tenant_name=tenant.name)
    return tenants


def set_role_limits(
    control_engine: sa.Engine,
    tenant_id: uuid.UUID,
    *,
    connection_limit: int,
    statement_timeout_ms: int,
) -> None:
    """Change the tenant role's limits; raises TenantNotFound (a LookupError).

    Existing sessions keep the statement_timeout they started with, so every worker is
    told (``limits_changed``) to drop the tenant's engine; new connections get the limits.
    """
    with control_engine.begin() as connection:
        role = _lock_role(connection, tenant_id)
        connection.exec_driver_sql(
            f'ALTER ROLE "{role}" CONNECTION LIMIT {int(connection_limit)}; '
            + _statement_timeout_sql(role, statement_timeout_ms)
        )
        notify(connection, TenantEvent(EventKind.LIMITS_CHANGED, tenant_id))


def role_limits(control_engine: sa.Engine, tenant_id: uuid.UUID) -> tuple[int, int | None]:
    """The tenant role's CONNECTION LIMIT and statement_timeout in ms (None if unset)."""
    with control_engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT r.rolconnlimit, "
                "(SELECT split_part(setting, '=', 2) FROM unnest(r.rolconfig) AS setting "
                " WHERE setting LIKE 'statement_timeout=%') AS timeout "
                "FROM pg_roles r JOIN tenants t ON t.db_user = r.rolname WHERE t.id = :id"
            ),
            {"id": tenant_id},
        ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    return row.rolconnlimit, None if row.timeout is None else int(row.timeout)


def rotate_credentials(
    control_engine: sa.Engine,
    keyring: Keyring,
    tenant_id: uuid.UUID,
    *,
    scram_iterations: int,
    actor: str,
) -> TenantInfo:
    """Give the tenant's role a new random password, online.

    The role's password and the stored ciphertext change in one transaction, which also
    queues the event that makes every worker rebuild the tenant's engine. Sessions logged in
    already keep working (PostgreSQL checks a password at login only), so requests in flight
    finish on their connections and new connections use the new password.
    """
    password = generate_password()
    with control_engine.begin() as connection:
        role = _lock_role(connection, tenant_id)
        connection.exec_driver_sql(
            f"ALTER ROLE \"{role}\" PASSWORD '{_verifier(password, scram_iterations)}'"
        )
        info = _update(
            connection,
            tenant_id,
            db_password_encrypted=keyring.encrypt(password, tenant_aad(tenant_id, role)),
            key_id=keyring.active_key_id,
        )
        notify(connection, TenantEvent(EventKind.CREDENTIALS_ROTATED, tenant_id))
    audit("credentials_rotated", tenant_id, actor=actor, tenant_name=info.name)
    return info


def rotate_api_key(control_engine: sa.Engine, tenant_id: uuid.UUID, *, actor: str) -> str:
    """Give the tenant a new API key (the old one stops working) and return it."""
    api_key = generate_api_key()
    with control_engine.begin() as connection:
        info = _update(connection, tenant_id, api_key_hash=hash_api_key(api_key))
        notify(connection, TenantEvent(EventKind.API_KEY_ROTATED, tenant_id))
    audit("api_key_rotated", tenant_id, actor=actor, tenant_name=info.name)
    return api_key


def suspend_tenant(control_engine: sa.Engine, tenant_id: uuid.UUID, *, actor: str) -> TenantInfo:
    """Refuse the tenant's requests (403) and its role's new logins; keeps its data."""
    info = _set_status(control_engine, tenant_id, TenantStatus.SUSPENDED)
    audit("suspended", tenant_id, actor=actor, tenant_name=info.name)
    return info


def resume_tenant(control_engine: sa.Engine, tenant_id: uuid.UUID, *, actor: str) -> TenantInfo:
    """Serve a suspended tenant again."""
    info = _set_status(control_engine, tenant_id, TenantStatus.ACTIVE)
    audit("resumed", tenant_id, actor=actor, tenant_name=info.name)
    return info


def delete_tenant(
    control_engine: sa.Engine,
    tenant_id: uuid.UUID,
    *,
    actor: str,
    grace: float = DEFAULT_DELETE_GRACE,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Delete the tenant: its sessions, its rows, its role and its secret.

    1. Suspend it (its own transaction): requests get 403 and the role cannot log in, so no
       new session appears while the old ones end.
    2. Let its sessions drain: idle ones end at once, running queries get ``grace`` seconds
       before their sessions are terminated too (their requests fail cleanly with 503).
    3. One transaction: delete the row (its rows in every tenant table go by ON DELETE
       CASCADE, its ciphertext and key hash with the row), drop the role, queue the event.
       The row is deleted only once no session of the tenant is left, so no write of it can
       race the cascade.

    Raises TenantNotFound, or TenantUnavailable if its sessions would not end; the tenant
    is then left suspended and deleting it again finishes the work.
    """
    info = _set_status(control_engine, tenant_id, TenantStatus.SUSPENDED)
    role = info.db_user
    with control_engine.begin() as connection:
        # Membership lets the owner see and end the role's sessions; see the module docstring.
        connection.exec_driver_sql(f'GRANT "{role}" TO CURRENT_USER')
        _end_sessions(connection, role, grace=grace, sleep=sleep, clock=clock)
        deleted = connection.execute(sa.delete(Tenant).where(Tenant.id == tenant_id))
        if deleted.rowcount != 1:
            raise TenantNotFound(f"no tenant {tenant_id}")
        # Objects or grants a tenant role should never have; without them DROP ROLE fails.
        connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
        connection.exec_driver_sql(f'DROP ROLE "{role}"')
        notify(connection, TenantEvent(EventKind.DELETED, tenant_id))
    audit("deleted", tenant_id, actor=actor, tenant_name=info.name)


def _end_sessions(
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


def _set_status(
    control_engine: sa.Engine, tenant_id: uuid.UUID, status: TenantStatus
) -> TenantInfo:
    """Set the row's status and the role's LOGIN to match, and queue the event."""
    with control_engine.begin() as connection:
        role = _lock_role(connection, tenant_id)
        login = "LOGIN" if status is TenantStatus.ACTIVE else "NOLOGIN"
        connection.exec_driver_sql(f'ALTER ROLE "{role}" {login}')
        info = _update(connection, tenant_id, status=status.value)
        kind = EventKind.RESUMED if status is TenantStatus.ACTIVE else EventKind.SUSPENDED
        notify(connection, TenantEvent(kind, tenant_id))
    return info


def _lock_role(connection: sa.Connection, tenant_id: uuid.UUID) -> str:
    """The tenant's role name, its row locked until the transaction ends.

    FOR NO KEY UPDATE, not FOR UPDATE: the tenant's own inserts take KEY SHARE on the row
    (their foreign key), and must not wait for an administrator.
    """
    role = connection.scalar(
        sa.select(Tenant.db_user).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    )
    if role is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    # DDL takes no bind parameters; the name is embedded, so its form is checked.
    if not _ROLE.match(role):
        raise ValueError(f"refusing to embed a malformed role name for tenant {tenant_id}")
    return role


def _update(connection: sa.Connection, tenant_id: uuid.UUID, **values: object) -> TenantInfo:
    row = connection.execute(
        sa.update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(**values, updated_at=sa.func.now())
        .returning(*_INFO_COLUMNS)
    ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    return TenantInfo(**row._mapping)


def _verifier(password: str, iterations: int) -> str:
    verifier = scram_sha256_verifier(password, iterations)
    # DDL takes no bind parameters; the verifier is embedded, so its alphabet is checked.
    if not is_scram_verifier(verifier):
        raise ValueError("refusing to embed a malformed SCRAM verifier")
    return verifier


def _statement_timeout_sql(role: str, timeout_ms: int) -> str:
    return f'ALTER ROLE "{role}" SET statement_timeout = {int(timeout_ms)}'
