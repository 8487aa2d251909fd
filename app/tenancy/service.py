"""The worker's tenancy: control-plane engine, tenant directory, engine registry, keyring.

``attach(app, tenancy)`` stores it on a web app and ``tenancy_of(app)`` finds it again, for
the request hooks, the API and the command line alike. Neither needs Flask: any object with
an ``extensions`` dict will do.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from app.crypto import Keyring
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.roles import RoleLimits
from app.tenancy.errors import (
    AuthenticationFailed,
    TenantSuspended,
)
from app.tenancy.serving.activity import DEDICATED, SHARED, TenantActivity
from app.tenancy.serving.backoff import LoginBackoff, is_auth_failure
from app.tenancy.serving.budget import ConnectionBudget
from app.tenancy.serving.consistency import ConsistencyToken
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.directory import TenantDirectory, TenantRecord
from app.tenancy.serving.engines import TenantEngineFactory
from app.tenancy.serving.events import TenantEvent
from app.tenancy.serving.fairshare import FairShare
from app.tenancy.serving.gateway import Gateways
from app.tenancy.serving.listener import TenantEventListener
from app.tenancy.serving.observer import Observer
from app.tenancy.serving.peers import PeerServer
from app.tenancy.serving.reaper import Reaper
from app.tenancy.serving.registry import EngineRegistry
from app.tenancy.serving.replica_reads import ReadReplicas
from app.tenancy.serving.resolve import check_api_key
from app.tenancy.serving.session import TenantSession
from app.tenancy.serving.throttle import AuthThrottle
from app.tenancy.serving.tokens import TokenVerifier
from app.tenancy.serving.ways import ServingMode, ServingWays, either_way


@dataclass
class Tenancy:
    """Everything one worker needs to serve tenant requests. Thread safe."""

    control_engine: sa.Engine
    directory: TenantDirectory
    registry: EngineRegistry[TenantSession]
    keyring: Keyring
    limits: RoleLimits
    budget: ConnectionBudget
    backoff: LoginBackoff
    clusters: Clusters
    engines: TenantEngineFactory
    gateways: Gateways
    ways: ServingWays
    fair_share: FairShare
    auth_throttle: AuthThrottle
    listener: TenantEventListener | None = None
    # End users' JWTs (APP_JWT_*); None: API keys only.
    tokens: TokenVerifier | None = None
    observer: Observer = field(default_factory=Observer)
    activity: TenantActivity = field(default_factory=TenantActivity)
    # Under gunicorn: this worker's socket for the other workers' questions (peers.py).
    peers: PeerServer | None = None
    # The process's reaper, watching this registry and listener; started by
    # ``start_background`` (gunicorn's post_fork starts it earlier), never by building.
    reaper: Reaper | None = None
    # APP_READ_REPLICAS: standbys that serve reads; None without any.
    replicas: ReadReplicas | None = None
    _background_started: bool = field(default=False, init=False, repr=False)

    def start_background(self) -> None:
        """Start the reaper thread, once; a tenant request's first act outside gunicorn.

        Short-lived commands (``flask tenancy check``) never serve a tenant request, so
        they start no thread and open no LISTEN connection.
        """
        if self.replicas is not None:
            self.replicas.start()  # idempotent; its own thread (probes every second)
        if self._background_started or self.reaper is None:
            return
        self.reaper.start()
        self._background_started = True

    def authenticate(self, tenant_id: uuid.UUID, api_key: str) -> TenantRecord:
        """The tenant, if ``api_key`` is its key and it is active.

        Raises AuthenticationFailed (unknown tenant, wrong or foreign key: one answer) or
        TenantSuspended.
        """
        record = self.directory.find(tenant_id)
        check_api_key(api_key, None if record is None else record.api_key_hash)
        if record is None:  # pragma: no cover - check_api_key raised already
            raise AuthenticationFailed("invalid API key for this tenant")
        if not record.active:
            raise TenantSuspended("this tenant is suspended")
        return record

    def authenticate_token(
        self, token: str, claimed: uuid.UUID | None
    ) -> tuple[TenantContext, bool]:
        """An end user's JWT: the context its requests run in, and whether it may write.

        ``claimed``: the ``X-Tenant-ID`` sent beside it, if any, which must name the token's
        tenant. Raises AuthenticationFailed (JWTs not configured, any bad token, a tenant
        that does not exist or is not the claimed one: one answer) or TenantSuspended, as
        for an API key.
        """
        if self.tokens is None:
            raise AuthenticationFailed("invalid API key for this tenant")
        identity = self.tokens.verify(token)
        if claimed is not None and claimed != identity.tenant_id:
            raise AuthenticationFailed("invalid bearer token for this tenant")
        record = self.directory.find(identity.tenant_id)
        if record is None:
            raise AuthenticationFailed("invalid bearer token for this tenant")
        if not record.active:
            raise TenantSuspended("this tenant is suspended")
        context = TenantContext(
            str(identity.tenant_id), identity.subject, identity.roles, identity.admin
        )
        return context, identity.can_write

    def open_session(
        self,
        tenant_id: uuid.UUID,
        *,
        read_only: bool = False,
        context: TenantContext | None = None,
        token: ConsistencyToken | None = None,
    ) -> TenantSession:
        """A session for the tenant on a connection checked out now; the caller closes it.

        ``context``: for whom its statements run, an end user of the tenant (a JWT); by
        default the tenant itself (an API key).

        The connection is the tenant's own engine's or a shared gateway connection's, as
        ``ways`` chooses (``APP_SERVING``, ``ways.either_way``).

        ``read_only``: every statement is its own read-only transaction, one round trip
        each (see ``app.tenancy.serving.session``); for requests that must not write.
        With read replicas, such a session runs on a replica in the rotation when one
        has replayed ``token``'s position (any, without a token), else on the primary.
        The connection is checked out here, not at the view's first query, so that every
        connection failure surfaces in one place. Raises TenantUnavailable,
        CapacityExhausted (no connection free in time) and SQLAlchemy errors (database
        unreachable).
        """
        if context is None:
            context = TenantContext.of_tenant(tenant_id)
        elif context.tenant_id != str(tenant_id):
            raise ValueError("the context names another tenant")
        record = self.directory.find(tenant_id)  # cached: the request just authenticated
        dedicated = self.ways.dedicated(tenant_id)
        way = DEDICATED if dedicated else SHARED
        opened = False
        started = time.perf_counter()
        try:
            on_replica = self._replica_session(context, record, read_only, dedicated, token)
            session, way = on_replica or self._primary_session(
                context, read_only, dedicated, record
            )
            opened = True
        finally:
            # Failures too: a request that waited for nothing and got 503 waited most.
            waited = time.perf_counter() - started
            self.observer.pool_wait(way, waited)
            self.activity.session_opened(tenant_id, way, waited, opened=opened)
        session.info["way"] = way
        if record is not None:
            session.info["cluster"] = record.cluster  # its writes' consistency tokens
        return session

    def _primary_session(
        self,
        context: TenantContext,
        read_only: bool,
        dedicated: bool,
        record: TenantRecord | None,
    ) -> tuple[TenantSession, str]:
        """A session on the tenant's primary, and its way."""
        return either_way(
            dedicated,
            self.ways.mode is ServingMode.MIX,
            lambda: self._dedicated_session(context, read_only),
            lambda: self._shared_session(context, read_only, record),
        )

    def _replica_session(
        self,
        context: TenantContext,
        record: TenantRecord | None,
        read_only: bool,
        dedicated: bool,
        token: ConsistencyToken | None,
    ) -> tuple[TenantSession, str] | None:
        """A read on a replica of the tenant's cluster, and its way; None: on the primary."""
        if not read_only or record is None or self.replicas is None:
            return None
        if not self.replicas.has_replicas(record.cluster):
            return None
        position = None if token is None else token.for_cluster(record.cluster)
        if token is not None and position is None:
            return None  # made on another cluster (the tenant moved): not comparable
        mix = self.ways.mode is ServingMode.MIX
        return self.replicas.session(
            context,
            record.cluster,
            dedicated=dedicated,
            mix=mix,
            position=position,
            changed_at=record.changed_at,
        )

    def _dedicated_session(self, context: TenantContext, read_only: bool) -> TenantSession:
        """A session on the tenant's own engine.

        If PostgreSQL rejects the tenant's credentials, the engine may hold a stale
        password (rotated elsewhere, its event not here yet): it is rebuilt once from
        credentials fetched again. A second rejection raises TenantUnavailable, and the
        tenant backs off (``LoginBackoff``).
        """
        tenant_id = uuid.UUID(context.tenant_id)
        try:
            return self._connected_session(context, read_only)
        except sa.exc.OperationalError as error:
            if not is_auth_failure(error):
                raise
        self.registry.evict(tenant_id, "auth")
        try:
            return self._connected_session(context, read_only)
        except sa.exc.OperationalError as error:
            if not is_auth_failure(error):
                raise
            raise self.backoff.unavailable(tenant_id) from None

    def _connected_session(self, context: TenantContext, read_only: bool) -> TenantSession:
        tenant_id = uuid.UUID(context.tenant_id)
        entry, connection = self.registry.connect(tenant_id, failed=self._connect_failed)
        return entry.sessionmaker(
            tenant_id=tenant_id, context=context, read_only=read_only, bind=connection
        )

    def _connect_failed(self, error: BaseException) -> None:
        # A new connection of a cached engine; the factory counts its own.
        if isinstance(error, sa.exc.OperationalError) and is_auth_failure(error):
            self.observer.login_rejected()

    def _shared_session(
        self, context: TenantContext, read_only: bool, record: TenantRecord | None
    ) -> TenantSession:
        """A session on a gateway connection of the tenant's cluster (DESIGN section 3a);
        ``record`` is the tenant's, as ``open_session`` found it."""
        if record is None:  # deleted since it authenticated: as for an unknown tenant
            raise AuthenticationFailed("tenant no longer exists")
        return self.gateways.session(context, record.cluster, read_only=read_only)

    def worker_view(self, tenant_id: uuid.UUID) -> dict[str, Any]:
        """What this worker holds and did for the tenant now: plain JSON-ready values.

        Connections: of its own engine's pool (open, in use) and the gateway connections
        its requests hold; the way it is served here; its recent requests and logins.
        """
        pool = self.registry.pool_status(tenant_id)
        activity = self.activity.snapshot(tenant_id)
        failures, retry_in = self.backoff.state(tenant_id)
        if self.ways.mode is ServingMode.MIX:
            way = DEDICATED if tenant_id in self.ways.hot() else SHARED
        else:
            way = DEDICATED if self.ways.mode is ServingMode.DEDICATED else SHARED
        recent = activity.recent
        return {
            "pid": os.getpid(),
            "way": way,
            "engine": pool is not None,
            "connections": {
                "dedicated_open": 0 if pool is None else pool[0],
                "dedicated_in_use": 0 if pool is None else pool[1],
                "shared_in_use": activity.shared_in_use,
            },
            "in_flight": activity.in_flight,
            "last_request_at": activity.last_request_at,
            "last_login_at": activity.last_login_at,
            "login_failures": failures,
            "login_retry_in": round(retry_in, 3),
            "recent": {
                "since": activity.recent_since,
                "requests": recent.requests,
                "client_errors": recent.client_errors,
                "server_errors": recent.server_errors,
                "dedicated": recent.dedicated,
                "shared": recent.shared,
                "pool_wait_seconds": round(recent.pool_wait_seconds, 6),
            },
        }

    def forget(self, tenant_id: uuid.UUID, reason: str) -> None:
        """Drop what this worker holds of the tenant: cached record and engines."""
        self.directory.invalidate(tenant_id)
        self._evict(tenant_id, reason)

    def _evict(self, tenant_id: uuid.UUID, reason: str) -> None:
        self.registry.evict(tenant_id, reason)
        if self.replicas is not None:
            self.replicas.evict(tenant_id, reason)

    def on_event(self, event: TenantEvent) -> None:
        """A tenant may have changed, here or on another node: check, and drop what is stale.

        Events are hints, never orders: any role that can connect to the control plane's
        database may NOTIFY on its channel (PostgreSQL has no privilege for it), so an
        event's kind is not believed. It costs at most a reload from the control plane:
        the tenant's cached record is forgotten (its next request reads it again), and if
        this worker holds an engine of it, or has it backing off after rejected logins,
        its credentials are read once and compared with what the engine or the failed
        login used. Only a real change (role, password, cluster, status, ``updated_at``;
        gone altogether) evicts the engine or ends the back-off. So a forged ``deleted``
        or ``suspended`` for a live tenant changes nothing, and a flood of them for ids
        this worker holds nothing of costs no query at all.
        """
        tenant_id = event.tenant_id
        self.directory.invalidate(tenant_id)
        entry = self.registry.peek(tenant_id)
        backing_off, failed_version = self.backoff.version_of(tenant_id)
        on_replicas = self.replicas is not None and self.replicas.holds(tenant_id)
        if entry is None and not backing_off and not on_replicas:
            # Nothing held, no query: only engines being created are cancelled (they fetch
            # their credentials again).
            self._evict(tenant_id, event.kind.value)
            return
        current = self.directory.credentials(tenant_id)
        version = None if current is None else current.version
        if entry is None or self.engines.version_of(entry.engine) != version:
            self.registry.evict(tenant_id, event.kind.value)
        if self.replicas is not None:
            self.replicas.evict_stale(tenant_id, version, event.kind.value)
        if backing_off and failed_version != version:
            self.backoff.reset(tenant_id)  # a rotation may have fixed the credentials

    def on_listener_reconnect(self) -> None:
        """Events sent while the listener was away are lost: refetch every tenant record."""
        self.directory.clear()

    def close(self) -> None:
        """Stop listening and dispose every engine of this worker (worker exit)."""
        if self.listener is not None:
            self.listener.close()
        if self.peers is not None:
            self.peers.close()
        if self.replicas is not None:
            self.replicas.close()
        self.registry.dispose_all()
        self.gateways.dispose()
        self.clusters.dispose()
        self.control_engine.dispose()


EXTENSION = "tenantpool"
"""The key of the tenancy in ``app.extensions``."""


class HasExtensions(Protocol):
    """A web app: Flask's ``app.extensions`` is such a dict."""

    extensions: dict[str, Any]


def attach(app: HasExtensions, tenancy: Tenancy) -> None:
    """Store the worker's tenancy on ``app``; refuse a second one."""
    if EXTENSION in app.extensions:
        raise RuntimeError("tenancy is already initialised on this app; call init_app once")
    app.extensions[EXTENSION] = tenancy


def tenancy_of(app: HasExtensions) -> Tenancy:
    """The app's tenancy; raises with what to do if none was attached."""
    try:
        tenancy: Tenancy = app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("tenancy is not initialised; did you forget to call init_app?") from None
    return tenancy
