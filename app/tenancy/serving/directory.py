"""The worker's view of the control plane: tenant metadata, cached for a short TTL."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import OrderedDict
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
    # When its role, grants, credentials or status last changed (``tenants.updated_at``).
    changed_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.status == TenantStatus.ACTIVE


@dataclass(frozen=True)
class TenantCredentials:
    """The tenant's role and its encrypted password, read fresh for every new engine.

    ``version`` tells whether anything an engine depends on changed since it was read: the
    role, the ciphertext (a rotation, even one made behind the service's back), the cluster,
    the status and ``updated_at``, which every change that announces an event bumps (new
    role limits included). Empty when unknown.
    """

    id: uuid.UUID
    db_user: str
    db_password_encrypted: str
    cluster: str
    version: tuple[object, ...] = ()


UNKNOWN_CACHE_SIZE = 10_000
"""Unknown tenant ids each worker remembers (least recently asked for first out)."""
LISTENING_FACTOR = 15
"""How many times ``ttl`` a cached answer is trusted while the worker hears change events."""


@dataclass(eq=False)
class _Load:
    """Loads of one tenant in flight, and the tenant's generation while they run.

    ``invalidate`` bumps the generation; a load that started under an older one read a
    record the change event may postdate, so its result is returned to its caller (it
    answers as of the request's start) but never cached.
    """

    readers: int = 0
    generation: int = 0


class TenantDirectory:
    """Tenant lookups through the control-plane engine, with a per-worker TTL cache.

    Thread safe: ``self._lock`` guards the caches and the loads in flight; it is never
    held during a query. Known tenants are cached for ``ttl`` seconds; unknown ids too, in
    a separate LRU of at most ``unknown_size`` entries, so a flood of requests naming ids
    that do not exist costs one control-plane query per distinct id and TTL, and bounded
    memory. Every change event (``created`` included) invalidates the id it names, so a
    tenant created a moment ago is found at once by every worker that hears the event;
    a worker whose listener missed events clears both caches (``clear``).

    While ``listening()`` says the worker's change-event listener is connected, an answer
    is trusted ``LISTENING_FACTOR`` times as long: every change reaches it as an event
    then, and the TTL is only for changes made without one (SQL by hand); re-reading every
    tenant's record once a TTL was a control-plane query per tenant and worker each minute.
    Once the listener is down, ``ttl`` bounds staleness again, for every answer already
    cached.

    No lost invalidation: a load records the tenant's generation when it starts and caches
    its result only if no ``invalidate`` (or ``clear``) ran meanwhile.
    """

    def __init__(
        self,
        control_engine: sa.Engine,
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        unknown_size: int = UNKNOWN_CACHE_SIZE,
    ) -> None:
        self._engine = control_engine
        self._ttl = ttl
        self.listening: Callable[[], bool] = lambda: False
        """Whether change events reach this worker now (set once its listener exists)."""
        self._clock = clock
        self._unknown_size = unknown_size
        self._lock = threading.Lock()
        self._cache: dict[uuid.UUID, tuple[float, TenantRecord]] = {}
        self._unknown: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._loads: dict[uuid.UUID, _Load] = {}

    def find(self, tenant_id: uuid.UUID) -> TenantRecord | None:
        """The tenant's record, from the cache when fresh; None if there is no such tenant."""
        now = self._clock()
        ttl = self._ttl * LISTENING_FACTOR if self.listening() else self._ttl
        with self._lock:
            cached = self._cache.get(tenant_id)
            if cached is not None and now - cached[0] < ttl:
                return cached[1]
            missing_since = self._unknown.get(tenant_id)
            if missing_since is not None and now - missing_since < ttl:
                self._unknown.move_to_end(tenant_id)
                return None
            load = self._loads.setdefault(tenant_id, _Load())
            load.readers += 1
            generation = load.generation
        try:
            record = self._load(tenant_id)
        except BaseException:
            with self._lock:
                self._end_load_locked(tenant_id, load)
            raise
        with self._lock:
            self._end_load_locked(tenant_id, load)
            if load.generation == generation:
                self._remember_locked(tenant_id, now, record)
        return record

    def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Forget the tenant, so the next request reads the control plane again."""
        with self._lock:
            self._cache.pop(tenant_id, None)
            self._unknown.pop(tenant_id, None)
            load = self._loads.get(tenant_id)
            if load is not None:
                load.generation += 1

    def clear(self) -> None:
        """Forget every tenant (change events may have been missed)."""
        with self._lock:
            self._cache.clear()
            self._unknown.clear()
            for load in self._loads.values():
                load.generation += 1

    def unknown_cached(self) -> int:
        """Unknown ids remembered now (at most ``unknown_size``)."""
        with self._lock:
            return len(self._unknown)

    def _end_load_locked(self, tenant_id: uuid.UUID, load: _Load) -> None:
        load.readers -= 1
        if load.readers == 0 and self._loads.get(tenant_id) is load:
            del self._loads[tenant_id]

    def _remember_locked(
        self, tenant_id: uuid.UUID, now: float, record: TenantRecord | None
    ) -> None:
        if record is not None:
            self._cache[tenant_id] = (now, record)
            self._unknown.pop(tenant_id, None)
            return
        self._cache.pop(tenant_id, None)
        self._unknown[tenant_id] = now
        self._unknown.move_to_end(tenant_id)
        while len(self._unknown) > self._unknown_size:
            self._unknown.popitem(last=False)

    def credentials(self, tenant_id: uuid.UUID) -> TenantCredentials | None:
        """The tenant's role, encrypted password and version, never cached."""
        query = sa.select(
            Tenant.id,
            Tenant.db_user,
            Tenant.db_password_encrypted,
            Tenant.cluster,
            Tenant.status,
            Tenant.updated_at,
        ).where(Tenant.id == tenant_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        version = (row.db_user, row.db_password_encrypted, row.cluster, row.status, row.updated_at)
        return TenantCredentials(
            row.id, row.db_user, row.db_password_encrypted, row.cluster, version
        )

    def _load(self, tenant_id: uuid.UUID) -> TenantRecord | None:
        query = sa.select(
            Tenant.id,
            Tenant.name,
            Tenant.status,
            Tenant.api_key_hash,
            Tenant.cluster,
            Tenant.updated_at,
        ).where(Tenant.id == tenant_id)
        with self._engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        return TenantRecord(
            row.id, row.name, row.status, bytes(row.api_key_hash), row.cluster, row.updated_at
        )
