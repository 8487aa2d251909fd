"""Reads on replicas: a tenant session on a standby, the same way as on its primary.

Each replica gets what a cluster's primary has in this worker: a registry of tenant
engines (each logging in as the tenant's own role, on the worker's one connection budget)
and a gateway pool (the shared way, its statements opened by the signed context, which the
replica verifies as the primary would: the key and the verifier replicate). Which of the
two serves a tenant is the primary's choice (``ways.py``), made by the caller.

Anything that keeps a replica from serving one read (it does not answer, rejects a login,
its gateway cannot be set up) sends that read to the primary instead: a replica never
costs a 500 or a 503 that the primary would not have given. A replica that failed to
connect leaves the rotation until the watcher hears from it again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.tenancy.errors import AuthenticationFailed, TenantUnavailable
from app.tenancy.serving.backoff import is_auth_failure
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.engines import TenantEngineFactory
from app.tenancy.serving.gateway import Gateways
from app.tenancy.serving.registry import EngineRegistry
from app.tenancy.serving.replicas import Replica, ReplicaRotation, ReplicaWatcher
from app.tenancy.serving.session import TenantSession
from app.tenancy.serving.ways import either_way

__all__ = ["ReadReplicas", "ReplicaTarget"]

logger = logging.getLogger(__name__)

SETTLING = dt.timedelta(seconds=1)
"""Margin for clocks: a replica serves a changed tenant once fresh this long after the change."""

SERVER = "server"
"""Key of ``session.info`` naming the replica that serves it (absent: the primary)."""


@dataclass
class ReplicaTarget:
    """What this worker holds to serve reads on one replica."""

    replica: Replica
    engines: TenantEngineFactory
    registry: EngineRegistry[TenantSession]
    gateways: Gateways


class ReadReplicas:
    """The worker's replicas: rotation, watcher and a target per replica. Thread safe."""

    def __init__(
        self,
        rotation: ReplicaRotation,
        watcher: ReplicaWatcher,
        targets: Mapping[Replica, ReplicaTarget],
    ) -> None:
        self.rotation = rotation
        self.watcher = watcher
        self._targets = dict(targets)
        self._counts = threading.Lock()
        self.served: dict[str, int] = {replica.name: 0 for replica in targets}
        self.fell_back = 0

    @property
    def targets(self) -> list[ReplicaTarget]:
        return list(self._targets.values())

    def has_replicas(self, cluster: str) -> bool:
        return cluster in self.rotation.clusters()

    def session(
        self,
        context: TenantContext,
        cluster: str,
        *,
        dedicated: bool,
        mix: bool,
        position: int | None,
        changed_at: dt.datetime | None = None,
    ) -> tuple[TenantSession, str] | None:
        """A read-only session on a replica of ``cluster`` and its way; None: use the primary.

        ``position``: the replica must have replayed it (a consistency token).
        ``changed_at``: when the tenant's role, grants or credentials last changed: only a
        replica known to hold every commit made until a second after that serves it (the
        second for the clocks of the database and this process), so a tenant created or
        resumed a moment ago, whose role or grant a replica may not have yet, reads on the
        primary meanwhile. Raises CapacityExhausted (the worker's budget is busy) as the
        primary would.
        """
        fresh_after = None if changed_at is None else self.settled_after(changed_at)
        replica = self.rotation.choose(cluster, position, fresh_after=fresh_after)
        if replica is None:
            return None
        target = self._targets[replica]
        try:
            session, way = self._open(target, context, dedicated=dedicated, mix=mix)
        except (TenantUnavailable, AuthenticationFailed, sa.exc.DBAPIError) as error:
            if isinstance(error, sa.exc.DBAPIError) and not is_auth_failure(error):
                self.rotation.failed(replica)
            logger.warning(
                "read on replica %s failed (%s); reading on the primary",
                replica.name,
                type(getattr(error, "orig", error)).__name__,
            )
            with self._counts:
                self.fell_back += 1
            return None
        session.info[SERVER] = replica.name
        with self._counts:
            self.served[replica.name] = self.served.get(replica.name, 0) + 1
        return session, way

    def settled_after(self, changed_at: dt.datetime) -> float:
        """The moment (the rotation's clock) a replica must be fresh after to serve a tenant
        changed at ``changed_at``."""
        return self.rotation.moment_of(changed_at) + SETTLING.total_seconds()

    def _open(
        self, target: ReplicaTarget, context: TenantContext, *, dedicated: bool, mix: bool
    ) -> tuple[TenantSession, str]:
        cluster = target.replica.cluster
        return either_way(
            dedicated,
            mix,
            lambda: self._dedicated(target, context),
            lambda: target.gateways.session(context, cluster, read_only=True),
        )

    def _dedicated(self, target: ReplicaTarget, context: TenantContext) -> TenantSession:
        tenant_id = uuid.UUID(context.tenant_id)
        try:
            entry, connection = target.registry.connect(tenant_id)
        except sa.exc.OperationalError as error:
            if is_auth_failure(error):
                # Perhaps a password rotated on the primary and not replayed here yet.
                target.registry.evict(tenant_id, "auth")
            raise
        return entry.sessionmaker(
            tenant_id=tenant_id, context=context, read_only=True, bind=connection
        )

    def holds(self, tenant_id: uuid.UUID) -> bool:
        """Whether some replica has an engine of the tenant in this worker."""
        return any(target.registry.peek(tenant_id) is not None for target in self.targets)

    def evict_stale(
        self,
        tenant_id: uuid.UUID,
        version: tuple[object, ...] | None,
        reason: str,
    ) -> None:
        """Drop the tenant's replica engines not built from credentials ``version``."""
        for target in self.targets:
            entry = target.registry.peek(tenant_id)
            if entry is None or target.engines.version_of(entry.engine) != version:
                target.registry.evict(tenant_id, reason)

    def evict(self, tenant_id: uuid.UUID, reason: str) -> None:
        for target in self.targets:
            target.registry.evict(tenant_id, reason)

    def status(self) -> list[dict[str, Any]]:
        """The rotation's view of each replica, with this worker's reads served there."""
        return [
            {**row, "reads_served": self.served.get(row["replica"], 0)}
            for row in self.rotation.status()
        ]

    def start(self) -> None:
        self.watcher.start()

    def close(self) -> None:
        """Stop watching; dispose every replica engine and gateway pool of this worker."""
        self.watcher.close()
        for target in self.targets:
            target.registry.dispose_all()
            target.gateways.dispose()


ReplicaFactory = Callable[[Replica], ReplicaTarget]
