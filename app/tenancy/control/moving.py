"""Moving a tenant to another cluster without losing an acknowledged write.

1. Control plane: the tenant's row is locked (``FOR UPDATE NOWAIT``) for the whole move, so
   a move and any other change of the tenant (``provisioning``) never interleave; its
   ``cluster`` is the source.
2. Target: leftovers of an interrupted move are removed; the tenant's role (its password,
   under a verifier computed here, and its own limits) and its placement are created.
3. Freeze: an owner transaction on each side takes the tenant's move lock exclusively.
   Every tenant transaction of the service takes it shared first (``tenant_move_gate()``
   in ``session.py``'s opening statement), so taking it waits for the transactions in
   flight, and from then on the tenant's requests get 503 with Retry-After: nothing is
   written on the source any more.
4. Source: the role may no longer log in and its other sessions are ended, by its own
   connection (a role may end its own backends; the owner may not end a tenant's). A worker
   that misses the change event can then not write where nobody will read.
5. Copy, parents first, through the tenant's own connections on both sides, so RLS applies
   as for any request (the owner never reads tenant rows); one snapshot; counts checked.
6. Switch: ``tenants.cluster`` changes and a MOVED event is queued in the transaction of
   step 1; its commit is the point of no return. Every worker evicts the tenant's engine;
   the next request connects to the target.
7. The target's lock is released; on the source the placement is deleted (cascading to the
   rows) and the role dropped, then its lock is released.

A failure before step 6 undoes steps 2 to 4: the source stays the tenant's home. A failure
after it leaves the old copy (its role unable to log in); running the move again removes it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

from app.models.placement import TenantPlacement
from app.models.tenant import Tenant, TenantStatus
from app.tenancy.control.audit import audit
from app.tenancy.control.clusters import Clusters, DatabaseIdentity, database_identity
from app.tenancy.control.copying import MoveError, Progress, copy_rows, end_other_sessions
from app.tenancy.control.roles import (
    RoleLimits,
    limits_of_role,
    place_tenant,
    remove_placement,
    remove_placement_in,
    set_login,
)
from app.tenancy.control.scram import scram_sha256_verifier
from app.tenancy.errors import TenancyError
from app.tenancy.serving.directory import TenantCredentials
from app.tenancy.serving.engines import TenantEngineFactory
from app.tenancy.serving.events import EventKind, TenantEvent, notify

__all__ = ["MoveError", "MoveIncomplete", "MoveReport", "Progress", "move_tenant"]

logger = logging.getLogger(__name__)


class MoveIncomplete(TenancyError):
    """The tenant was moved, but its old copy could not be removed; run the move again."""


@dataclass(frozen=True)
class MoveReport:
    """What a move did: rows copied per table, old copies removed."""

    tenant_id: uuid.UUID
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    removed_from: tuple[str, ...] = ()


def move_tenant(
    clusters: Clusters,
    engines: TenantEngineFactory,
    limits: RoleLimits,
    tenant_id: uuid.UUID,
    target: str,
    *,
    progress: Progress | None = None,
    batch_size: int = 1000,
    lock_timeout: float = 30.0,
    actor: str = "system",
) -> MoveReport:
    """Move the tenant's rows and role to the cluster ``target`` (see the module docstring).

    Idempotent: a tenant already on ``target`` only has stale copies elsewhere removed.
    A suspended tenant stays suspended (its roles cannot log in). Raises MoveError
    (nothing changed), MoveIncomplete (moved, old copy left) or UnknownCluster.
    """
    clusters.url(target)
    with clusters.control.connect() as control:
        tenant = _lock_tenant(control, tenant_id)
        if tenant.credentials.cluster == target:
            removed = _remove_stale_copies(clusters, tenant.credentials)
            control.commit()
            return MoveReport(tenant_id, target, target, removed_from=removed)
        move = _Move(clusters, engines, limits, tenant, target, lock_timeout)
        move.check()
        rows = move.run(control, progress or _no_progress, batch_size)
    source = tenant.credentials.cluster
    audit("moved", tenant_id, actor=actor, tenant_name=tenant.name)
    return MoveReport(tenant_id, source, target, rows, (source,))


@dataclass(frozen=True)
class _Locked:
    """The tenant as read (and locked) in the control plane."""

    credentials: TenantCredentials
    name: str
    active: bool


class _Move:
    """One move's state: who, from where to where, with which engines."""

    def __init__(
        self,
        clusters: Clusters,
        engines: TenantEngineFactory,
        limits: RoleLimits,
        locked: _Locked,
        target: str,
        lock_timeout: float,
    ) -> None:
        tenant = locked.credentials
        self.tenant = tenant
        self.active = locked.active
        self.control_engine = clusters.control
        self.source, self.target = tenant.cluster, target
        self.source_owner = clusters.engine(tenant.cluster)
        self.target_owner = clusters.engine(target)
        self.limits = limits
        self.lock_timeout_ms = int(lock_timeout * 1000)
        self.password = engines.password(tenant)
        # The copy reads and writes as the tenant's own role, as any request would.
        self.source_tenant = engines.engine_for(tenant, clusters.url(self.source), pooled=False)
        self.target_tenant = engines.engine_for(tenant, clusters.url(target), pooled=False)
        self.signer = engines.signer  # read once the move is checked: each cluster's own key

    def check(self) -> None:
        """Refuse moves between schema versions and between databases of one server."""
        source_id, source_rev = _describe(self.source_owner)
        target_id, target_rev = _describe(self.target_owner)
        if source_rev != target_rev:
            raise MoveError(
                f"cluster {self.source!r} is at migration {source_rev}, {self.target!r} at "
                f"{target_rev}: run `flask db upgrade` (it migrates every cluster) first"
            )
        if source_id.same_server(target_id):
            raise MoveError(
                f"clusters {self.source!r} and {self.target!r} are on one PostgreSQL server, "
                "whose roles are shared: move tenants between servers"
            )

    def run(self, control: sa.Connection, progress: Progress, batch_size: int) -> dict[str, int]:
        """Steps 2 to 7 of the module docstring; the tenant engines are disposed after."""
        try:
            self._prepare_target()
            with (
                self.target_owner.connect() as target_lock,
                self.source_owner.connect() as source_lock,
            ):
                rows = self._copy_frozen(target_lock, source_lock, progress, batch_size)
                self._switch(control)
                self._remove_source(target_lock, source_lock)
        finally:
            self.source_tenant.dispose()
            self.target_tenant.dispose()
        return rows

    def _prepare_target(self) -> None:
        """Step 2: the role and the placement on the target, leftovers removed first."""
        # The copy logs in as the tenant on both sides, and a move interrupted before its
        # switch may have left the source unable to log in. A suspended tenant's requests are
        # refused before any login, so allowing it meanwhile exposes nothing.
        try:
            _set_login(self.source_owner, self.tenant.db_user, allowed=True)
            remove_placement(self.target_owner, self.tenant.id)
            verifier = scram_sha256_verifier(self.password, self.limits.scram_iterations)
            limits = self._role_limits()
            with self.target_owner.begin() as connection:
                place_tenant(connection, self.tenant.id, verifier, limits)
        except BaseException:
            self._undo()
            raise

    def _copy_frozen(
        self,
        target_lock: sa.Connection,
        source_lock: sa.Connection,
        progress: Progress,
        batch_size: int,
    ) -> dict[str, int]:
        """Steps 3 to 5: freeze both sides, stop the source's logins, copy; undo on failure."""
        role = self.tenant.db_user
        try:
            self._freeze(target_lock)
            self._freeze(source_lock)
            with self.source_tenant.connect() as source, self.target_tenant.connect() as dest:
                _set_login(self.source_owner, role, allowed=False)
                if not self.active:  # it stays suspended where it lands
                    _set_login(self.target_owner, role, allowed=False)
                end_other_sessions(source)
                return copy_rows(
                    source,
                    dest,
                    self.tenant.id,
                    (self.signer(self.source), self.signer(self.target)),
                    progress,
                    batch_size,
                )
        except BaseException:
            self._undo()
            raise

    def _switch(self, control: sa.Connection) -> None:
        """Step 6, the point of no return."""
        try:
            _switch(control, self.tenant.id, self.source, self.target)
        except BaseException:
            # The commit may have happened even so: undo only what surely did not.
            if self._home() == self.source:
                self._undo()
            raise

    def _remove_source(self, target_lock: sa.Connection, source_lock: sa.Connection) -> None:
        """Step 7: release the target; remove the old copy and release the source."""
        try:
            target_lock.commit()
            # Our own session of the role has ended: nothing of it is left here.
            remove_placement_in(source_lock, self.tenant.id)
            source_lock.commit()
        except Exception as error:
            raise MoveIncomplete(
                f"tenant {self.tenant.id} now lives on {self.target!r}, but its old copy on "
                f"{self.source!r} could not be removed ({type(error).__name__}); run "
                "the same move again to remove it"
            ) from error

    def _role_limits(self) -> RoleLimits:
        """The limits the tenant's role has on the source (its own, if it was given some)."""
        with self.source_owner.connect() as connection:
            found = limits_of_role(connection, self.tenant.db_user)
        if found is None:
            return self.limits
        connection_limit, timeout_ms = found
        if timeout_ms is None:
            timeout_ms = self.limits.statement_timeout_ms
        return RoleLimits(connection_limit, timeout_ms, self.limits.scram_iterations)

    def _freeze(self, connection: sa.Connection) -> None:
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {self.lock_timeout_ms}")
        try:
            # The lock every tenant transaction of the service takes shared (session.py).
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(tenant_move_lock(:tenant))"),
                {"tenant": self.tenant.id},
            )
        except sa.exc.OperationalError as error:
            if getattr(error.orig, "pgcode", None) == "55P03":  # lock_not_available
                raise MoveError(
                    f"the tenant's transactions did not finish within "
                    f"{self.lock_timeout_ms / 1000:g} s; try again"
                ) from None
            raise

    def _home(self) -> str | None:
        """The tenant's cluster according to the control plane; None if unreadable."""
        try:
            with self.control_engine.connect() as connection:
                return connection.execute(
                    sa.select(Tenant.cluster).where(Tenant.id == self.tenant.id)
                ).scalar()
        except Exception:
            logger.exception("cannot read where tenant %s lives", self.tenant.id)
            return None

    def _undo(self) -> None:
        """Make the source the tenant's only home again; log, never raise, on failure."""
        for step in (
            lambda: _set_login(self.source_owner, self.tenant.db_user, allowed=self.active),
            lambda: remove_placement(self.target_owner, self.tenant.id),
        ):
            try:
                step()
            except Exception:
                logger.exception("undoing the move of tenant %s failed", self.tenant.id)


def _no_progress(table: str, copied: int, total: int) -> None:
    """Progress is optional."""


def _lock_tenant(control: sa.Connection, tenant_id: uuid.UUID) -> _Locked:
    query = (
        sa.select(
            Tenant.id,
            Tenant.db_user,
            Tenant.db_password_encrypted,
            Tenant.cluster,
            Tenant.name,
            Tenant.status,
        )
        .where(Tenant.id == tenant_id)
        .with_for_update(nowait=True)
    )
    try:
        row = control.execute(query).one_or_none()
    except sa.exc.OperationalError as error:
        if getattr(error.orig, "pgcode", None) == "55P03":
            raise MoveError(
                f"tenant {tenant_id} is being changed (another move or a rotation); try again"
            ) from None
        raise
    if row is None:
        raise MoveError(f"no tenant {tenant_id}")
    credentials = TenantCredentials(row.id, row.db_user, row.db_password_encrypted, row.cluster)
    return _Locked(credentials, row.name, row.status == TenantStatus.ACTIVE)


def _describe(owner: sa.Engine) -> tuple[DatabaseIdentity, str]:
    """The database's identity and its migration ("none" if never migrated)."""
    with owner.connect() as connection:
        revision = "none"
        if connection.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar():
            found = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            revision = found.scalar() or "none"
        return database_identity(connection), revision


def _set_login(owner: sa.Engine, role: str, *, allowed: bool) -> None:
    with owner.begin() as connection:
        set_login(connection, role, allowed=allowed)


def _switch(control: sa.Connection, tenant_id: uuid.UUID, source: str, target: str) -> None:
    """Point the control plane at the target and tell every worker; commits."""
    control.execute(
        sa.update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.cluster == source)
        .values(cluster=target, updated_at=sa.func.now())
    )
    notify(control, TenantEvent(EventKind.MOVED, tenant_id))
    control.commit()


def _remove_stale_copies(clusters: Clusters, tenant: TenantCredentials) -> tuple[str, ...]:
    """Remove the tenant from every cluster but its own (the end of an interrupted move)."""
    home = clusters.identity(tenant.cluster)
    removed = []
    for name in clusters.names:
        identity = clusters.identity(name)
        if identity == home:
            continue  # another name for the tenant's own database
        engine = clusters.engine(name)
        with engine.connect() as connection:
            held = connection.execute(
                sa.select(TenantPlacement.tenant_id).where(TenantPlacement.tenant_id == tenant.id)
            ).first()
        if held is None:
            continue
        # Its role cannot log in (the move set NOLOGIN and ended its sessions before the
        # switch); on the home server the role is the live one and stays.
        remove_placement(engine, tenant.id, drop_role=not identity.same_server(home))
        removed.append(name)
    return tuple(removed)
