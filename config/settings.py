"""Typed settings and their loading from the environment (DESIGN section 9)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from config.jwt import JwtSettings, load_jwt
from config.reader import ConfigError, Reader, choice, float_between, int_between

ENVIRONMENTS = ("development", "testing", "production")
SERVING_MODES = ("dedicated", "shared", "mix")
"""How tenants reach PostgreSQL (app/tenancy/serving/ways.py)."""
TRACING_MODES = ("off", "console", "otlp")
"""Where OpenTelemetry spans go (app/tracing.py); off by default."""
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")
_CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# libpq (and psycopg2, which SQLAlchemy hands the query as keywords) lets a DSN's query
# string override what the rest of the URL says, and tenant engines only replace the URL's
# user and password: these would decide who every tenant connection logs in as, or where.
_QUERY_REFUSED = {
    "user": "credentials belong before the host (postgresql://user:password@host/db)",
    "password": "credentials belong before the host (postgresql://user:password@host/db)",
    "passfile": "a password file would decide the password of every connection",
    "service": "a service may name the user, password, host and database of every connection",
    "servicefile": "a service file may name the user, password, host and database",
    "dbname": "it may hold a whole connection string (user, password, host)",
    "dsn": "it may hold a whole connection string (user, password, host)",
    "options": "server options may set the role every connection runs as (-c role=...)",
}
_QUERY_HOST_KEYS = ("host", "hostaddr", "port")
# target_session_attrs that keep a multi-host DSN on the primary ("any" is the operator's
# own choice, for a list whose every host takes writes, such as PgBouncers of the primary).
_WRITABLE_ATTRS = ("read-write", "primary", "any")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with. Immutable once loaded.

    Fields have no defaults here: :func:`load_settings` states each default once, beside the
    variable it belongs to (several derive from others, like the pool size from threads).
    """

    env: str
    database_url: str
    encryption_keys: Mapping[str, bytes]
    encryption_active_key: str
    admin_token: str | None
    clusters: Mapping[str, str]
    bind: str
    workers: int
    threads: int
    serving: str
    gateway_pool_size: int
    tenant_pool_size: int
    tenant_max_overflow: int
    max_engines: int
    connection_budget: int
    pool_timeout: float
    idle_ttl: float
    reaper_interval: float
    tenant_cache_ttl: float
    tenant_connection_limit: int
    tenant_statement_timeout_ms: int
    connect_timeout: int
    database_io_timeout: float
    scram_iterations: int
    max_content_length: int
    trusted_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    trusted_proxies: int
    log_level: str
    tracing: str
    jwt: JwtSettings | None
    tenant_thread_share: int
    tenant_node_share: int
    tenant_share_wait: float
    auth_failure_limit: int
    idempotency_ttl: float
    read_replicas: Mapping[str, tuple[str, ...]]
    replica_max_lag: float


BUDGET_HEADROOM = 2
"""Default connection budget = threads + this: one busy connection per request thread, and
a couple kept idle so the next request of a recent tenant needs no new login."""


def _default_workers() -> int:
    return 2 * (os.cpu_count() or 1)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``APP_*`` variable; raise ConfigError on the first bad one."""
    env = os.environ if environ is None else environ
    reader = Reader(env)
    app_env = reader.get("APP_ENV", "development", choice(ENVIRONMENTS))
    database_url = reader.require("APP_DATABASE_URL", _database_url)
    keys = reader.require("APP_ENCRYPTION_KEYS", _keyring)
    active = reader.require("APP_ENCRYPTION_ACTIVE_KEY", str)
    if active not in keys:
        raise ConfigError(
            f"APP_ENCRYPTION_ACTIVE_KEY: key id {active!r} is not in APP_ENCRYPTION_KEYS "
            f"(known: {', '.join(sorted(keys))})"
        )
    admin_token = reader.get("APP_ADMIN_TOKEN", None, _admin_token)
    threads = reader.get("APP_THREADS", 4, int_between(1, 256))
    statement_timeout_ms = reader.get(
        "APP_TENANT_STATEMENT_TIMEOUT_MS", 5000, int_between(1, 3_600_000)
    )
    settings = Settings(
        env=app_env,
        database_url=database_url,
        encryption_keys=keys,
        encryption_active_key=active,
        admin_token=admin_token,
        clusters=reader.get("APP_CLUSTERS", {}, _clusters),
        bind=reader.get("APP_BIND", "127.0.0.1:8080", _bind),
        workers=reader.get("APP_WORKERS", _default_workers(), int_between(1, 256)),
        threads=threads,
        # A tenant uses at most one connection per request thread; an overflow connection
        # is closed when it comes back, so each burst above the pool size would log in again.
        serving=reader.get("APP_SERVING", "mix", choice(SERVING_MODES)),
        # One shared connection per request thread: a request never waits for another's.
        gateway_pool_size=reader.get("APP_GATEWAY_POOL_SIZE", threads, int_between(1, 100)),
        tenant_pool_size=reader.get("APP_TENANT_POOL_SIZE", threads, int_between(1, 100)),
        tenant_max_overflow=reader.get("APP_TENANT_MAX_OVERFLOW", 0, int_between(0, 100)),
        max_engines=reader.get("APP_MAX_ENGINES", 200, int_between(1, 100_000)),
        connection_budget=reader.get(
            "APP_CONNECTION_BUDGET", threads + BUDGET_HEADROOM, int_between(1, 10_000)
        ),
        pool_timeout=reader.get("APP_POOL_TIMEOUT", 5.0, float_between(0.0, 300.0)),
        idle_ttl=reader.get("APP_IDLE_TTL", 300.0, float_between(0.1, 86_400.0)),
        reaper_interval=reader.get("APP_REAPER_INTERVAL", 5.0, float_between(0.05, 3_600.0)),
        tenant_cache_ttl=reader.get("APP_TENANT_CACHE_TTL", 60.0, float_between(0.0, 3_600.0)),
        tenant_connection_limit=reader.get(
            "APP_TENANT_CONNECTION_LIMIT", 20, int_between(1, 10_000)
        ),
        tenant_statement_timeout_ms=statement_timeout_ms,
        connect_timeout=reader.get("APP_CONNECT_TIMEOUT", 5, int_between(1, 300)),
        database_io_timeout=reader.get(
            "APP_DATABASE_IO_TIMEOUT", statement_timeout_ms / 1000 + 5, float_between(1.0, 3_600.0)
        ),
        scram_iterations=reader.get("APP_SCRAM_ITERATIONS", 64, int_between(1, 10_000_000)),
        max_content_length=reader.get(
            "APP_MAX_CONTENT_LENGTH", 1024 * 1024, int_between(1024, 1024**3)
        ),
        trusted_cidrs=reader.get("APP_ADMIN_TRUSTED_CIDRS", (), _cidrs),
        trusted_proxies=reader.get("APP_TRUSTED_PROXIES", 0, int_between(0, 10)),
        log_level=reader.get(
            "APP_LOG_LEVEL", "INFO", choice(("DEBUG", "INFO", "WARNING", "ERROR"))
        ),
        tracing=reader.get("APP_TRACING", "off", choice(TRACING_MODES)),
        jwt=load_jwt(reader, app_env),
        # Half the threads: a noisy tenant leaves the other half to everyone else. At or
        # above APP_THREADS there is no cap (the wiring takes the smaller of the two).
        tenant_thread_share=reader.get(
            "APP_TENANT_THREAD_SHARE", max(1, threads // 2), int_between(1, 256)
        ),
        # As many as the node has cores: a heavy tenant's expensive statements cannot take
        # every core from the others (app/node_share.py). At or above
        # APP_WORKERS x APP_THREADS there is no cap.
        tenant_node_share=reader.get(
            "APP_TENANT_NODE_SHARE", max(1, os.cpu_count() or 1), int_between(1, 65_536)
        ),
        tenant_share_wait=reader.get("APP_TENANT_SHARE_WAIT", 0.1, float_between(0.0, 60.0)),
        auth_failure_limit=reader.get("APP_AUTH_FAILURE_LIMIT", 30, int_between(1, 1_000_000)),
        # How long a write's Idempotency-Key replays its answer (app/idempotency.py): a day,
        # as Stripe keeps them; at least a minute, so a client's retries fit.
        idempotency_ttl=reader.get(
            "APP_IDEMPOTENCY_TTL", 86_400.0, float_between(60.0, 30 * 86_400.0)
        ),
        read_replicas=reader.get("APP_READ_REPLICAS", {}, _read_replicas),
        replica_max_lag=reader.get("APP_REPLICA_MAX_LAG", 5.0, float_between(0.5, 3_600.0)),
    )
    _check_replica_clusters(settings)
    if settings.database_io_timeout * 1000 <= settings.tenant_statement_timeout_ms:
        raise ConfigError(
            "APP_DATABASE_IO_TIMEOUT: must be longer than APP_TENANT_STATEMENT_TIMEOUT_MS, so "
            "the server cancels a slow statement first and its connection stays usable"
        )
    if settings.env == "production":
        _refuse_unsafe_production(settings)
    return settings


def _refuse_unsafe_production(settings: Settings) -> None:
    if settings.admin_token is None:
        raise ConfigError("APP_ADMIN_TOKEN: required when APP_ENV=production")
    url = make_url(settings.database_url)
    if not url.password:
        raise ConfigError("APP_DATABASE_URL: production needs a password-authenticated DSN")


def _database_url(raw: str, label: str = "APP_DATABASE_URL") -> str:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError(
            "is not a database URL (postgresql://user:password@host:port/db)"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"must be a postgresql:// URL, not {url.get_backend_name()}://")
    if not url.database:
        raise ValueError("names no database (postgresql://user:password@host:port/db)")
    if url.drivername not in ("postgresql", "postgresql+psycopg2"):
        raise ValueError(f"driver {url.drivername!r} is not supported; use postgresql://")
    _check_query(url)
    return psycopg2_url(_writable(url, label))


def _writable(url: URL, label: str) -> str:
    """``url``, sent to the host that takes writes when it lists several (libpq multi-host).

    Everything the service does through these DSNs writes or listens, so several hosts
    without ``target_session_attrs`` get ``read-write`` (said in one log line), and a value
    that would pick a standby is refused.
    """
    raw = url.render_as_string(hide_password=False)
    try:
        # What libpq will be given: SQLAlchemy's reading of ?host=h1:p1&host=h2:p2.
        _, params = PGDialect_psycopg2().create_connect_args(url)  # type: ignore[no-untyped-call]  # SQLAlchemy's dialects are untyped
    except ArgumentError as error:
        raise ValueError(f"lists its hosts in a form SQLAlchemy cannot read: {error}") from None
    names = str(params.get("host", "")).split(",")
    listed = len(names)
    if listed > 1 and any(name.count(":") == 1 for name in names):
        # ?host=h1:p1,h2:p2 would reach libpq as host names "h1:p1" and "h2:p2"
        raise ValueError("lists its hosts as h1:p1,h2:p2; write ?host=h1:p1&host=h2:p2")
    attrs = url.query.get("target_session_attrs")
    if attrs is not None and attrs not in _WRITABLE_ATTRS:
        raise ValueError(
            f"?target_session_attrs={attrs} would connect to a server that refuses writes; "
            "use read-write (or primary) here"
        )
    if listed < 2 or attrs is not None:
        return raw
    log.warning(
        "%s lists %d hosts without target_session_attrs: added target_session_attrs=read-write, "
        "so writes and LISTEN reach the primary",
        label,
        listed,
    )
    return url.update_query_dict({"target_session_attrs": "read-write"}).render_as_string(
        hide_password=False
    )


def _check_query(url: URL) -> None:
    """Refuse query parameters that would override who logs in, or where (never echoes values).

    Tenant engines take the DSN and set the tenant's own user and password on it; a
    ``?user=...&password=...`` in the query would win over both, and every tenant would run
    as whoever the query names (the owner, say). ``host``/``port`` in the query are allowed
    only when the URL names no host of its own (libpq's multi-host or socket form).
    """
    for key in sorted(url.query):
        name = key.lower()
        if name in _QUERY_REFUSED:
            raise ValueError(f"?{key}= is not allowed in the query string: {_QUERY_REFUSED[name]}")
        if name in _QUERY_HOST_KEYS and (url.host or url.port):
            raise ValueError(
                f"?{key}= in the query string would override the host of the URL; "
                "name the hosts in one place (postgresql://user:password@/db?host=h1&host=h2)"
            )


def psycopg2_url(raw: str) -> str:
    """``raw`` with the psycopg2 driver named: SQLAlchemy 2.1 defaults to psycopg 3."""
    url = make_url(raw).set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def _keyring(raw: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    # Commas or line breaks separate entries, so a key file can hold one key per line.
    for position, item in enumerate(re.split(r"[,\s]+", raw.strip()), start=1):
        kid, sep, hexkey = item.partition(":")
        if not sep or not _KEY_ID.match(kid):
            raise ValueError(
                f"entry {position} must look like kid:64-hex (kid of letters, digits, _ or -); "
                "generate one with `flask crypto generate-key`"
            )
        if not _HEX_KEY.match(hexkey):
            raise ValueError(f"key {kid!r} must be 64 hex digits (256 bits)")
        if kid in keys:
            raise ValueError(f"key id {kid!r} appears twice")
        keys[kid] = bytes.fromhex(hexkey)
    return keys


def _admin_token(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters; generate one with `openssl rand -hex 32`")
    return raw


def _clusters(raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError('must be a JSON object {"name": "postgresql://..."}') from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError('must be a JSON object {"name": "postgresql://..."}')
    clusters = {}
    for name, dsn in value.items():
        if not _CLUSTER_NAME.match(name):
            raise ValueError(f"cluster name {name!r} must be lower-case letters, digits, _ or -")
        try:
            clusters[name] = _database_url(dsn, f"APP_CLUSTERS[{name!r}]")
        except ValueError as error:
            raise ValueError(f"cluster {name!r}: {error}") from None
        # Only default may lack them: its owner work goes through APP_DATABASE_URL.
        if name != "default" and not make_url(clusters[name]).username:
            raise ValueError(
                f"cluster {name!r} needs its owner's credentials: "
                "postgresql://owner:password@host:port/db"
            )
    return clusters


def _bind(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, not {raw!r}")
    return raw


def _cidrs(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in raw.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not an IP network like 10.0.0.0/8") from None
    return tuple(networks)


def _read_replicas(raw: str) -> dict[str, tuple[str, ...]]:
    """``{"cluster": ["postgresql://host:port/db", ...]}``: where, never who (see README)."""
    shape = 'must be a JSON object {"cluster": ["postgresql://host:port/db", ...]}'
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(shape) from None
    if not isinstance(value, dict):
        raise ValueError(shape)
    replicas: dict[str, tuple[str, ...]] = {}
    for name, dsns in value.items():
        if not isinstance(dsns, list) or not all(isinstance(dsn, str) for dsn in dsns):
            raise ValueError(shape)
        found = []
        for position, dsn in enumerate(dsns, start=1):
            try:
                url = make_url(_database_url(dsn))
            except ValueError as error:
                raise ValueError(f"cluster {name!r}, replica {position}: {error}") from None
            if url.username or url.password:
                raise ValueError(
                    f"cluster {name!r}, replica {position}: leave out the user and password; "
                    "the service logs in on a replica as on its primary"
                )
            found.append(url.render_as_string(hide_password=False))
        if len(set(found)) != len(found):
            raise ValueError(f"cluster {name!r} lists a replica twice")
        replicas[name] = tuple(found)
    return replicas


def _check_replica_clusters(settings: Settings) -> None:
    known = {"default", *settings.clusters}
    for name in sorted(settings.read_replicas):
        if name not in known:
            raise ConfigError(
                f"APP_READ_REPLICAS: cluster {name!r} is not in APP_CLUSTERS "
                f"(known: {', '.join(sorted(known))})"
            )
