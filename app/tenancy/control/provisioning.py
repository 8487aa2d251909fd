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

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.crypto import Keyring, tenant_aad
from app.models.tenant import Tenant, TenantStatus
from app.tenancy.control.audit import audit
from app.tenancy.control.clusters import DEFAULT_CLUSTER, Clusters
from app.tenancy.control.queries import INFO_COLUMNS, TenantInfo, get_tenant
from app.tenancy.control.roles import (
    ROLE,
    RoleLimits,
    end_sessions_of,
    limits_of_role,
    place_tenants,
    remove_placement_in,
    role_name,
    role_verifier,
    set_login,
    statement_timeout_sql,
)
from app.tenancy.control.scram import generate_password
from app.tenancy.errors import TenantNameTaken, TenantNotFound
from app.tenancy.serving.events import EventKind, TenantEvent, notify
from app.tenancy.serving.resolve import generate_api_key, hash_api_key

DEFAULT_DELETE_GRACE = 2.0
"""Seconds a deleted tenant's running queries get to finish before their sessions end."""


@dataclass(frozen=True)
class ProvisionedTenant:
    """A tenant and its new API key, which is shown once and never stored."""

    id: uuid.UUID
    name: str
    api_key: str


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
    rows, verifiers = _new_secrets(tenants, keyring, limits, cluster)
    placed_on: sa.Engine | None = None
    try:
        with clusters.control.begin() as control:
            control.execute(sa.insert(Tenant).values(rows))
            with clusters.transaction(cluster, control) as data:
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
        with clusters.transaction(cluster, control) as data:
            data.exec_driver_sql(
                f'ALTER ROLE "{role}" CONNECTION LIMIT {int(connection_limit)}; '
                + statement_timeout_sql(role, statement_timeout_ms)
            )
        # The row changes too (updated_at): workers believe an event only when the
        # control plane shows a change (Tenancy.on_event).
        _update(control, tenant_id)
        notify(control, TenantEvent(EventKind.LIMITS_CHANGED, tenant_id))


def role_limits(clusters: Clusters, tenant_id: uuid.UUID) -> tuple[int, int | None]:
    """The tenant role's CONNECTION LIMIT and statement_timeout in ms (None if unset)."""
    info = get_tenant(clusters.control, tenant_id)
    with clusters.engine(info.cluster).connect() as data:
        limits = limits_of_role(data, info.db_user)
    if limits is None:
        raise TenantNotFound(f"no role of tenant {tenant_id} on cluster {info.cluster!r}")
    return limits


def _new_secrets(
    tenants: Sequence[ProvisionedTenant], keyring: Keyring, limits: RoleLimits, cluster: str
) -> tuple[list[dict[str, object]], dict[uuid.UUID, str]]:
    """The control-plane rows of new tenants and their roles' SCRAM verifiers.

    Each role gets a random password: encrypted into its row (bound to the tenant and role
    as associated data), and sent to PostgreSQL only as the verifier.
    """
    rows: list[dict[str, object]] = []
    verifiers: dict[uuid.UUID, str] = {}
    for tenant in tenants:
        role = role_name(tenant.id)
        password = generate_password()
        verifiers[tenant.id] = role_verifier(password, limits.scram_iterations)
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
    return rows, verifiers


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
        with clusters.transaction(cluster, connection) as data:
            data.exec_driver_sql(
                f"ALTER ROLE \"{role}\" PASSWORD '{role_verifier(password, scram_iterations)}'"
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
        with clusters.transaction(cluster, control) as data:
            if data.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
                # Membership lets the owner see and end the role's sessions; see the module
                # docstring.
                data.exec_driver_sql(f'GRANT "{role}" TO CURRENT_USER')
                end_sessions_of(data, role, grace=grace, sleep=sleep, clock=clock)
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


def _set_status(clusters: Clusters, tenant_id: uuid.UUID, status: TenantStatus) -> TenantInfo:
    """Set the row's status and the role's LOGIN to match, and queue the event.

    A role already gone (a deletion half done) is left so: nothing can log in as it.
    """
    with clusters.control.begin() as connection:
        role, cluster = _lock_tenant(connection, tenant_id)
        with clusters.transaction(cluster, connection) as data:
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
    if not ROLE.fullmatch(row.db_user):
        raise ValueError(f"refusing to embed a malformed role name for tenant {tenant_id}")
    return row.db_user, row.cluster


def _update(connection: sa.Connection, tenant_id: uuid.UUID, **values: object) -> TenantInfo:
    row = connection.execute(
        sa.update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(**values, updated_at=sa.func.now())
        .returning(*INFO_COLUMNS)
    ).one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}")
    return TenantInfo(**row._mapping)
