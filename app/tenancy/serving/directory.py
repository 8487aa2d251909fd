"""The worker's view of the control plane: tenant metadata, cached for a short TTL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from app.models.tenant import Tenant, TenantStatus


@dataclass(frozen=True)
class TenantRecord:
    """What a request needs to know of its tenant; no secret in plain text."""

    id: uuid.UUID
    name: str
    status: str
    api_key_hash: bytes
    cluster: str

    @property
    def active(self) -> bool:
        return self.status == TenantStatus.ACTIVE


@dataclass(frozen=True)
class TenantCredentials:
    """The tenant's role and its encrypted password, read fresh for every new engine."""

    id: uuid.UUID
    db_user: str
    db_password_encrypted: str
    cluster: str


class TenantDirectory:
    """Tenant lookups through the control-plane engine, with a per-worker TTL cache.

    Thread safe: the cache dict is guarded by one lock, never held during a query. Only
    existing tenants are cached, so a tenant created a moment ago is found at once.
    """

    def __init__(
        self, control_engine: sa.Engine, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = control_engine
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[uuid.UUID, tuple[float, TenantRecord]] = {}

    def find(self, tenant_id: uuid.UUID) -> TenantRecord | None:
        """The tenant's record, from the cache when fresh; None if there is no such tenant."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(tenant_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        record = self._load(tenant_id)
        with self._lock:
            if record is None:
                self._cache.pop(tenant_id, None)
            else:
                self._cache[tenant_id] = (now, record)
        return record

    def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Forget the tenant, so the next request reads the control plane again."""
        with self._lock:
            self._cache.pop(tenant_id, None)

    def clear(self) -> None:
        """Forget every tenant (change events may have been missed)."""
        with self._lock:
            self._cache.clear()

    def credentials(self, tenant_id: uuid.UUID) -> TenantCredentials | None:
        """The tenant's role and encrypted password, never cached."""
        query = sa.select(
            Tenant.id, Tenant.db_user, Tenant.db_password_encrypted, Tenant.cluster
        ).where(Tenant.id == tenant_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        return TenantCredentials(row.id, row.db_user, row.db_password_encrypted, row.cluster)

    def _load(self, tenant_id: uuid.UUID) -> TenantRecord | None:
        query = sa.select(
            Tenant.id, Tenant.name, Tenant.status, Tenant.api_key_hash, Tenant.cluster
        ).where(Tenant.id == tenant_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        return TenantRecord(row.id, row.name, row.status, bytes(row.api_key_hash), row.cluster)
