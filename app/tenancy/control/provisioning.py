"""Tenant lifecycle: create, rotate credentials or API key, suspend, resume, delete.

The admin API and the ``flask tenants`` commands both call these functions. Each change is
one owner transaction that also queues the tenant's change event (``events.notify``), so
every worker hears of it exactly when, and only if, it is committed; one audit line follows
each committed change.

A tenant's role lives on the cluster that holds its rows, beside a secret-free
``tenant_placements`` row (the parent of those rows); its encrypted password and API key
hash stay in the control plane's ``tenants`` row. Functions that change a role take the
``Clusters``: on the control plane's own database (the ``default`` cluster, usually) role
and row change in one transaction; on another cluster the cluster's transaction commits
just before the control plane's, inside it.

The role's password is random and reaches PostgreSQL only as a SCRAM-SHA-256 verifier
computed here, so no server log can show it. Rotating it changes the role and the stored
ciphertext together: in one transaction on the control plane's database, else with the two
commits a moment apart (a login in between fails once and is retried with credentials
fetched again). The role's
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

import contextlib
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import Keyring, tenant_aad
from app.models.placement import TenantPlacement
from app.models.tenant import Tenant, TenantStatus
from app.tenancy.control.audit import audit
from app.tenancy.control.clusters import DEFAULT_CLUSTER, Clusters
from app.tenancy.control.ddl import TENANT_BASE_ROLE, TENANT_ROLE_PATTERN
from app.tenancy.control.scram import generate_password, is_scram_verifier, scram_sha256_verifier
from app.tenancy.errors import TenantNameTaken, TenantNotFound, TenantUnavailable
from app.tenancy.serving.events import EventKind, TenantEvent, notify
from app.tenancy.serving.resolve import generate_api_key, hash_api_key

DEFAULT_DELETE_GRACE = 2.0
"""Seconds a deleted tenant's running queries get to finish before their sessions end."""

_TERMINATE_WAIT_MS = 5000
_DRAIN_POLL = 0.05
# fullmatch, so a trailing newline (which $ alone would allow) is refused.
_ROLE = re.compile(TENANT_ROLE_PATTERN)


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
    clusters: Clusters,
    keyring: Keyring,
    name: str,
    limits: RoleLimits,
    *,
    cluster: str = DEFAULT_CLUSTER,
    actor: str = "system",
) -> ProvisionedTenant:
    """Create the tenant on ``cluster`` and return its API key (see ``create_tenants``)."""
    return create_tenants(clusters, keyring, [name], limits, cluster=cluster, actor=actor)[0]


def create_tenants(
    clusters: Clusters,
    keyring: Keyring,
    names: Sequence[str],
    limits: RoleLimits,
    *,
    cluster: str = DEFAULT_CLUSTER,
    actor: str = "system",
) -> list[ProvisionedTenant]:
    """Create several tenants on ``cluster``: all of them, or none.

    A few round trips whatever the count (the rows in one INSERT, the role statements in
    one message), so seeding a thousand tenants does not cost a thousand commits. Raises
    UnknownCluster before anything is written, and TenantNameTaken if a name is taken
    (before the cluster is touched).
    """
    data_engine = clusters.engine(cluster)
    tenants = [ProvisionedTenant(uuid.uuid4(), name, generate_api_key()) for name in names]
    if not tenants:
        return []
    verifiers: dict[uuid.UUID, str] = {}
    rows = []
    for tenant in tenants:
        role = role_name(tenant.id)
        password = generate_password()
        verifiers[tenant.id] = _verifier(password, limits.scram_iterations)
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
    placed_on: sa.Engine | None = None
    try:
        with clusters.control.begin() as control:
            control.execute(sa.insert(Tenant).values(rows))
            with _on_cluster(clusters, cluster, control) as data:
                place_tenants(data, verifiers, limits)
            if data_engine is not clusters.control:
                placed_on = data_engine
            for tenant in tenants:
                notify(control, TenantEvent(EventKind.CREATED, tenant.id))
    except BaseException as error:
        if placed_on is not None:  # the control plane's commit failed: undo the cluster's
            with placed_on.begin() as data:
                for tenant in tenants:
                    remove_placement_in(data, tenant.id)
        # ids and roles come from fresh uuid4s: a unique violation is a name.
        if (
            isinstance(error, sa.exc.IntegrityError)
            and getattr(error.orig, "pgcode", None) == "23505"
        ):
            taken = ", ".join(repr(name) for name in names)
            raise TenantNameTaken(f"a tenant named {taken} exists already") from None
        raise
    for tenant in tenants:
        audit("created", tenant.id, actor=actor, tenant_name=tenant.name)
    return tenants


def place_tenant(
    connection: sa.Connection, tenant_id: uuid.UUID, verifier: str, limits: RoleLimits
) -> None:
    """On ``connection``'s cluster: the role (logging in with ``verifier``) and the placement."""
    place_tenants(connection, {tenant_id: verifier}, limits)


def place_tenants(
    connection: sa.Connection, verifiers: dict[uuid.UUID, str], limits: RoleLimits
) -> None:
    """:func:`place_tenant` for several tenants: one message of role statements, one INSERT.

    The owner runs it; each role gets the limits, ``tenant_base`` and nothing else.
    """
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
            + _statement_timeout_sql(role, limits.statement_timeout_ms)
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
    """LOGIN or NOLOGIN for ``role`` on ``connection``'s cluster; False if it has no such role."""
    if not _ROLE.fullmatch(role):
        raise ValueError("refusing to embed a malformed role name")
    exists = connection.execute(
        sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).scalar()
    if exists:
        connection.exec_driver_sql(f'ALTER ROLE "{role}" {"LOGIN" if allowed else "NOLOGIN"}')
    return bool(exists)


def set_role_limits(
    clusters: Clusters,
    tenant_id: uuid.UUID,
    *,
    connection_limit: int,
    statement_timeout_ms: int,
) -> None:
    """Change the tenant role's limits, on its cluster; raises TenantNotFound (a LookupError).

    Existing sessions keep the statement_timeout they started with, so every worker is
    told (``limits_changed``) to drop the tenant's engine; new connections get the limits.
    """
    with clusters.control.begin() as control:
        role, cluster = _lock_tenant(control, tenant_id)
        with _on_cluster(clusters, cluster, control) as data:
            data.exec_driver_sql(
                f'ALTER ROLE "{role}" CONNECTION LIMIT {int(connection_limit)}; '
                + _statement_timeout_sql(role, statement_timeout_ms)
            )
        notify(control, TenantEvent(EventKind.LIMITS_CHANGED, tenant_id))


def role_limits(clusters: Clusters, tenant_id: uuid.UUID) -> tuple[int, int | None]:
    """The tenant role's CONNECTION LIMIT and statement_timeout in ms (None if unset)."""
    info = get_tenant(clusters.control, tenant_id)
    with clusters.engine(info.cluster).connect() as data:
        limits = limits_of_role(data, info.db_user)
    if limits is None:
        raise TenantNotFound(f"no role of tenant {tenant_id} on cluster {info.cluster!r}")
    return limits


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


def rotate_credentials(
    clusters: Clusters,
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
    with clusters.control.begin() as connection:
        role, cluster = _lock_tenant(connection, tenant_id)
        with _on_cluster(clusters, cluster, connection) as data:
            data.exec_driver_sql(
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


def suspend_tenant(clusters: Clusters, tenant_id: uuid.UUID, *, actor: str) -> TenantInfo:
    """Refuse the tenant's requests (403) and its role's new logins; keeps its data."""
    info = _set_status(clusters, tenant_id, TenantStatus.SUSPENDED)
    audit("suspended", tenant_id, actor=actor, tenant_name=info.name)
    return info


def resume_tenant(clusters: Clusters, tenant_id: uuid.UUID, *, actor: str) -> TenantInfo:
    """Serve a suspended tenant again."""
    info = _set_status(clusters, tenant_id, TenantStatus.ACTIVE)
    audit("resumed", tenant_id, actor=actor, tenant_name=info.name)
    return info


def delete_tenant(
    clusters: Clusters,
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
    2. Let its sessions drain, on its cluster: idle ones end at once, running queries get
       ``grace`` seconds before their sessions are terminated too (their requests fail
       cleanly with 503).
    3. On its cluster, its placement goes (its rows in every tenant table by ON DELETE
       CASCADE) and its role is dropped; in the control plane its row (ciphertext and key
       hash with it) is deleted and the event queued. The rows are deleted only once no
       session of the tenant is left, so no write of it can race the cascade.

    Raises TenantNotFound, or TenantUnavailable if its sessions would not end; the tenant
    is then left suspended and deleting it again finishes the work (so it does if the
    cluster's part committed and the control plane's did not).
    """
    info = _set_status(clusters, tenant_id, TenantStatus.SUSPENDED)
    with clusters.control.begin() as control:
        role, cluster = _lock_tenant(control, tenant_id)  # where it is now, after any move
        with _on_cluster(clusters, cluster, control) as data:
            if data.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
                # Membership lets the owner see and end the role's sessions; see the module
                # docstring.
                data.exec_driver_sql(f'GRANT "{role}" TO CURRENT_USER')
                _end_sessions(data, role, grace=grace, sleep=sleep, clock=clock)
                remove_placement_in(data, tenant_id, drop_role=False)
                # Objects or grants a tenant role should never have; without them DROP ROLE
                # fails.
                data.exec_driver_sql(f'DROP OWNED BY "{role}"')
                data.exec_driver_sql(f'DROP ROLE "{role}"')
            else:
                remove_placement_in(data, tenant_id, drop_role=False)
        control.execute(sa.delete(Tenant).where(Tenant.id == tenant_id))
        notify(control, TenantEvent(EventKind.DELETED, tenant_id))
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


def _set_status(clusters: Clusters, tenant_id: uuid.UUID, status: TenantStatus) -> TenantInfo:
    """Set the row's status and the role's LOGIN to match, and queue the event.

    A role already gone (a deletion half done) is left so: nothing can log in as it.
    """
    with clusters.control.begin() as connection:
        role, cluster = _lock_tenant(connection, tenant_id)
        with _on_cluster(clusters, cluster, connection) as data:
            set_login(data, role, allowed=status is TenantStatus.ACTIVE)
        info = _update(connection, tenant_id, status=status.value)
        kind = EventKind.RESUMED if status is TenantStatus.ACTIVE else EventKind.SUSPENDED
        notify(connection, TenantEvent(kind, tenant_id))
    return info


def _lock_tenant(connection: sa.Connection, tenant_id: uuid.UUID) -> tuple[str, str]:
    """The tenant's role name and cluster, its row locked until the transaction ends.

    FOR NO KEY UPDATE, not FOR UPDATE: a move holds the row FOR UPDATE (it may change the
    cluster), and so excludes these changes while it runs, and they exclude each other.
    """
    row = connection.execute(
        sa.select(Tenant.db_user, Tenant.cluster)
        .where(Tenant.id == tenant_id)
        .with_for_update(key_share=True)
    ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    # DDL takes no bind parameters; the name is embedded, so its form is checked.
    if not _ROLE.fullmatch(row.db_user):
        raise ValueError(f"refusing to embed a malformed role name for tenant {tenant_id}")
    return row.db_user, row.cluster


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


@contextlib.contextmanager
def _on_cluster(
    clusters: Clusters, cluster: str, control: sa.Connection
) -> Iterator[sa.Connection]:
    """An owner transaction on ``cluster``: ``control``'s own if it is the same database.

    Else a transaction of its own, committed when the block ends (before ``control``'s).
    """
    engine = clusters.engine(cluster)
    if engine is clusters.control:
        yield control
        return
    with engine.begin() as data:
        yield data
