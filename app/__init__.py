"""tenantpool: the application factory.

``create_app`` loads settings and calls each part's ``init_app`` in dependency order; it
opens no connection (engines connect lazily), so it is safe before a fork.
"""

from __future__ import annotations

from flask import Flask

from app import api, cli, dbwait, errors, hooks, logs, request_log
from app.crypto import Keyring
from app.db import create_control_engine
from app.metrics import TenancyMetrics
from app.tenancy import Tenancy
from app.tenancy.backoff import LoginBackoff
from app.tenancy.budget import ConnectionBudget
from app.tenancy.clusters import DEFAULT_CLUSTER, Clusters
from app.tenancy.directory import TenantDirectory
from app.tenancy.engines import PoolSettings, TenantEngineFactory
from app.tenancy.listener import TenantEventListener, connector
from app.tenancy.provisioning import RoleLimits
from app.tenancy.reaper import process_reaper
from app.tenancy.registry import EngineRegistry
from app.tenancy.session import tenant_sessionmaker
from config import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; ``settings`` default to the ``APP_*`` environment."""
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TESTING=settings.env == "testing",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    errors.init_app(app)
    request_log.init_app(app)
    hooks.init_app(app, build_tenancy(settings))
    api.init_app(app)
    cli.init_app(app)
    _start_reaper(app, settings)
    return app


def build_tenancy(settings: Settings) -> Tenancy:
    """Wire the worker's tenancy from settings; connects to nothing yet."""
    dbwait.install()
    control_engine = create_control_engine(
        settings.database_url,
        connect_timeout=settings.connect_timeout,
        io_timeout=settings.database_io_timeout,
    )
    keyring = Keyring(settings.encryption_keys, settings.encryption_active_key)
    directory = TenantDirectory(control_engine, ttl=settings.tenant_cache_ttl)
    names = {*settings.clusters, DEFAULT_CLUSTER}
    clusters = Clusters(control_engine, {name: settings.cluster_url(name) for name in names})
    observer = TenancyMetrics()
    budget = ConnectionBudget(
        settings.connection_budget, timeout=settings.pool_timeout, observer=observer
    )
    backoff = LoginBackoff()
    factory = TenantEngineFactory(
        directory,
        keyring,
        clusters.url,
        PoolSettings(
            pool_size=settings.tenant_pool_size,
            max_overflow=settings.tenant_max_overflow,
            pool_timeout=settings.pool_timeout,
            connect_timeout=settings.connect_timeout,
            io_timeout=settings.database_io_timeout,
        ),
        budget=budget,
        backoff=backoff,
        observer=observer,
    )
    registry = EngineRegistry(
        factory,
        session_factory=tenant_sessionmaker,
        max_engines=settings.max_engines,
        idle_ttl=settings.idle_ttl,
        observer=observer,
    )
    limits = RoleLimits(
        connection_limit=settings.tenant_connection_limit,
        statement_timeout_ms=settings.tenant_statement_timeout_ms,
        scram_iterations=settings.scram_iterations,
    )
    tenancy = Tenancy(
        control_engine,
        directory,
        registry,
        keyring,
        limits,
        budget,
        backoff,
        clusters,
        observer=observer,
    )
    tenancy.listener = TenantEventListener(
        connector(settings.database_url, connect_timeout=settings.connect_timeout),
        tenancy.on_event,
        on_reconnect=tenancy.on_listener_reconnect,
    )
    return tenancy


def _start_reaper(app: Flask, settings: Settings) -> None:
    # Under gunicorn, post_fork started it already; elsewhere (flask run, tests) start here.
    tenancy = hooks.tenancy_of(app)
    reaper = process_reaper()
    reaper.configure(interval=settings.reaper_interval)
    reaper.watch(tenancy.registry)
    if tenancy.listener is not None:
        reaper.listen(tenancy.listener)
    reaper.start()
