"""From settings to the worker's tenancy: the one place where config meets the tenancy layer.

The tenancy layer takes plain values and callables (STYLE.md), so something has to read
``Settings`` and build its parts; that is this module. Nothing here connects: engines
connect lazily, the reaper is only told what to watch (it starts with the first tenant
request, or in gunicorn's ``post_fork``), so building is safe before a fork and costs a
short-lived ``flask`` command no thread.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from app import dbwait, top_tenants
from app.crypto import Keyring
from app.db import create_control_engine
from app.metrics import TenancyMetrics, worker_directory
from app.tenancy import Tenancy
from app.tenancy.control.clusters import Clusters, owner_urls
from app.tenancy.control.gateways import context_key, gateway_access
from app.tenancy.control.roles import RoleLimits
from app.tenancy.errors import UnknownCluster
from app.tenancy.serving.activity import TenantActivity
from app.tenancy.serving.backoff import LoginBackoff
from app.tenancy.serving.budget import ConnectionBudget
from app.tenancy.serving.directory import TenantDirectory
from app.tenancy.serving.engines import PoolSettings, TenantEngineFactory
from app.tenancy.serving.fairshare import FairShare
from app.tenancy.serving.gateway import GatewayAccess, Gateways
from app.tenancy.serving.listener import TenantEventListener, connector
from app.tenancy.serving.observer import Observer
from app.tenancy.serving.peers import PeerServer
from app.tenancy.serving.reaper import Reaper, process_reaper
from app.tenancy.serving.registry import EngineRegistry
from app.tenancy.serving.replica_reads import ReadReplicas, ReplicaTarget
from app.tenancy.serving.replicas import Replica, ReplicaRotation, ReplicaWatcher, on_replica
from app.tenancy.serving.session import TenantSession, tenant_sessionmaker
from app.tenancy.serving.throttle import AuthThrottle
from app.tenancy.serving.tokens import JwksCache, TokenVerifier
from app.tenancy.serving.ways import ServingMode, ServingWays
from config import Settings

LISTENER_MAX_DELAY = 2.0
"""Longest wait, in seconds, between two attempts of the change listener to reconnect."""


def build_tenancy(settings: Settings) -> Tenancy:
    """Wire the worker's tenancy from settings; connects to nothing yet."""
    dbwait.install()
    control_engine, clusters = _control_plane(settings)
    observer = TenancyMetrics()
    observer.budget_limit(settings.connection_budget)
    activity = TenantActivity()
    directory = TenantDirectory(control_engine, ttl=settings.tenant_cache_ttl)
    budget = ConnectionBudget(
        settings.connection_budget, timeout=settings.pool_timeout, observer=observer
    )
    backoff = LoginBackoff(observer=observer)
    keyring = Keyring(settings.encryption_keys, settings.encryption_active_key)
    engines = TenantEngineFactory(
        directory,
        keyring,
        clusters.url,
        _pool_settings(settings),
        budget=budget,
        backoff=backoff,
        # Read once per cluster and worker: the key changes only with the database.
        context_key=functools.cache(functools.partial(context_key, clusters)),
        observer=observer,
        activity=activity,
    )
    gateway_fetch = functools.partial(
        gateway_access, clusters, keyring, scram_iterations=settings.scram_iterations
    )
    tenancy = Tenancy(
        control_engine,
        directory,
        _registry(settings, engines, observer),
        keyring,
        role_limits(settings),
        budget,
        backoff,
        clusters,
        engines,
        _gateways(settings, gateway_fetch, directory, observer),
        _serving_ways(settings),
        _fair_share(settings, observer),
        AuthThrottle(settings.auth_failure_limit),
        observer=observer,
        activity=activity,
    )
    tenancy.tokens = _token_verifier(settings)
    tenancy.replicas = _read_replicas(settings, tenancy, gateway_fetch)
    _attach_background(tenancy, settings, control_engine)
    return tenancy


def _control_plane(settings: Settings) -> tuple[sa.Engine, Clusters]:
    """The control-plane engine and the clusters' owner engines (none connected yet)."""
    control_engine = create_control_engine(
        settings.database_url,
        connect_timeout=settings.connect_timeout,
        io_timeout=settings.database_io_timeout,
        pool_timeout=settings.pool_timeout,
    )
    clusters = Clusters.configured(
        control_engine,
        settings.clusters,
        # Owner work (moves, removals) may run long statements: keepalives, no io bound.
        connect_args=dbwait.connect_args(connect_timeout=settings.connect_timeout, io_timeout=None),
    )
    return control_engine, clusters


def _fair_share(settings: Settings, observer: Observer) -> FairShare:
    # A share at or above the thread count means no cap.
    share = min(settings.tenant_thread_share, settings.threads)
    return FairShare(settings.threads, share, wait=settings.tenant_share_wait, observer=observer)


def _read_replicas(
    settings: Settings, tenancy: Tenancy, gateway_fetch: Callable[[str], GatewayAccess]
) -> ReadReplicas | None:
    """``APP_READ_REPLICAS``: a rotation, its watcher, and per replica what the primary has."""
    if not any(settings.read_replicas.values()):
        return None
    owners = owner_urls(settings.database_url, settings.clusters)
    replicas = [
        Replica(cluster, sa.make_url(dsn))
        for cluster, dsns in sorted(settings.read_replicas.items())
        for dsn in dsns
    ]
    rotation = ReplicaRotation(replicas, max_lag=settings.replica_max_lag)
    watcher = ReplicaWatcher(
        rotation,
        {cluster: owners[cluster] for cluster in rotation.clusters()},
        {replica: on_replica(owners[replica.cluster], replica.url) for replica in replicas},
    )
    targets = {
        replica: _replica_target(settings, tenancy, replica, gateway_fetch) for replica in replicas
    }
    return ReadReplicas(rotation, watcher, targets)


def _replica_target(
    settings: Settings,
    tenancy: Tenancy,
    replica: Replica,
    gateway_fetch: Callable[[str], GatewayAccess],
) -> ReplicaTarget:
    """Tenant engines and a gateway pool on ``replica``, logging in as on its primary."""

    def cluster_url(name: str) -> sa.URL:
        if name != replica.cluster:
            raise UnknownCluster(name)
        return on_replica(tenancy.clusters.url(name), replica.url)

    def gateway_on_replica(name: str) -> GatewayAccess:
        access = gateway_fetch(name)
        return dataclasses.replace(access, url=on_replica(access.url, replica.url))

    pool = _pool_settings(settings)
    observer = tenancy.observer
    engines = TenantEngineFactory(
        tenancy.directory,
        tenancy.keyring,
        cluster_url,
        pool,
        budget=tenancy.budget,  # one budget for every server: the bound stays per worker
        # Its own: a login refused here (a rotation not replayed yet) must not hold the
        # tenant back on its primary.
        backoff=LoginBackoff(observer=observer),
        context_key=tenancy.engines.signer_key,
        observer=observer,
        activity=tenancy.activity,
        writable=False,  # a standby is read-only: not a failover
    )
    registry = _registry(settings, engines, observer)
    gateways = _gateways(settings, gateway_on_replica, tenancy.directory, observer, writable=False)
    return ReplicaTarget(replica, engines, registry, gateways)


def _registry(
    settings: Settings, engines: TenantEngineFactory, observer: Observer
) -> EngineRegistry[TenantSession]:
    return EngineRegistry(
        engines,
        session_factory=tenant_sessionmaker,
        max_engines=settings.max_engines,
        idle_ttl=settings.idle_ttl,
        observer=observer,
    )


def _gateways(
    settings: Settings,
    fetch: Callable[[str], GatewayAccess],
    directory: TenantDirectory,
    observer: Observer,
    *,
    writable: bool = True,
) -> Gateways:
    return Gateways(
        fetch,
        _pool_settings(settings),
        size=settings.gateway_pool_size,
        statement_timeout_ms=settings.tenant_statement_timeout_ms,
        on_refused=directory.invalidate,
        observer=observer,
        writable=writable,
    )


def _token_verifier(settings: Settings) -> TokenVerifier | None:
    """End users' JWTs, when ``APP_JWT_JWKS_URL`` is set; else API keys only."""
    jwt = settings.jwt
    if jwt is None:
        return None
    return TokenVerifier(
        JwksCache(jwt.jwks_url),
        issuer=jwt.issuer,
        audience=jwt.audience,
        tenant_claim=jwt.tenant_claim,
        roles_claim=jwt.roles_claim,
        admin_role=jwt.admin_role,
        write_scope=jwt.write_scope,
    )


def role_limits(settings: Settings) -> RoleLimits:
    """The limits new tenant roles get."""
    return RoleLimits(
        connection_limit=settings.tenant_connection_limit,
        statement_timeout_ms=settings.tenant_statement_timeout_ms,
        scram_iterations=settings.scram_iterations,
    )


def _pool_settings(settings: Settings) -> PoolSettings:
    return PoolSettings(
        pool_size=settings.tenant_pool_size,
        max_overflow=settings.tenant_max_overflow,
        pool_timeout=settings.pool_timeout,
        connect_timeout=settings.connect_timeout,
        io_timeout=settings.database_io_timeout,
    )


def _serving_ways(settings: Settings) -> ServingWays:
    """In ``mix``, as many tenants get their own engine as the budget holds pools of."""
    slots = max(1, settings.connection_budget // settings.tenant_pool_size)
    return ServingWays(ServingMode(settings.serving), dedicated_slots=slots)


def _attach_background(tenancy: Tenancy, settings: Settings, control_engine: sa.Engine) -> None:
    """The change-event listener, and the process's reaper told to watch; nothing started."""
    tenancy.listener = TenantEventListener(
        connector(
            control_engine.url,
            connect_timeout=settings.connect_timeout,
            io_timeout=settings.database_io_timeout,
        ),
        tenancy.on_event,
        on_reconnect=tenancy.on_listener_reconnect,
        # After a failover the new primary is found within about a second or two (and a
        # refused connection attempt costs a server next to nothing).
        max_delay=LISTENER_MAX_DELAY,
        observer=tenancy.observer,
    )
    listener = tenancy.listener
    tenancy.directory.listening = lambda: listener.connected
    reaper = process_reaper()
    reaper.configure(interval=settings.reaper_interval)
    reaper.watch(tenancy.registry)
    reaper.listen(tenancy.listener)
    for target in [] if tenancy.replicas is None else tenancy.replicas.targets:
        reaper.watch(target.registry)
    tenancy.reaper = reaper
    workers = worker_directory()
    if workers is not None:  # under gunicorn: workers that can ask and tell each other
        _attach_peers(tenancy, reaper, workers)


def _attach_peers(tenancy: Tenancy, reaper: Reaper, workers: Path) -> None:
    """Answer the other workers about a tenant; publish this worker's busiest tenants."""
    tenancy.peers = PeerServer(workers, tenancy.worker_view)
    reaper.listen(tenancy.peers)
    reaper.add_task(functools.partial(top_tenants.write_top, workers, tenancy.activity))
