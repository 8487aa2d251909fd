"""Building a tenant's engine: read its credentials, decrypt, connect as its own role.

Called by the registry outside its lock; may be slow (a query, a decryption, a TCP and
SCRAM handshake) and may raise. Every engine's pool draws on the worker's connection
budget; a tenant whose credentials keep being rejected backs off (``LoginBackoff``).
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from sqlalchemy.util import LRUCache

from app import dbwait
from app.crypto import CryptoError, Keyring, tenant_aad
from app.dbfailover import follow_writable
from app.dbwait import discard_if_closed_by_server
from app.tenancy.errors import AuthenticationFailed, TenantUnavailable, UnknownCluster
from app.tenancy.serving.activity import TenantActivity
from app.tenancy.serving.backoff import LoginBackoff, is_auth_failure
from app.tenancy.serving.budget import ConnectionBudget
from app.tenancy.serving.context import ContextSigner
from app.tenancy.serving.directory import TenantCredentials, TenantDirectory
from app.tenancy.serving.observer import Observer
from app.tenancy.serving.session import (
    BINDING,
    PINNED,
    TENANT_DRIVER,
    pinned,
    translate_moving,
)

logger = logging.getLogger(__name__)

COMPILED_CACHE_SIZE = 1000
"""Compiled statements kept per worker for all tenant engines together (see below)."""


@dataclass(frozen=True)
class PoolSettings:
    """Per-tenant pool bounds, from config."""

    pool_size: int
    max_overflow: int
    pool_timeout: float
    connect_timeout: int
    io_timeout: float


class TenantEngineFactory:
    """Callable ``tenant_id -> Engine`` connecting as the tenant's own LOGIN role.

    Raises TenantUnavailable while the tenant backs off after rejected logins (no login is
    tried then), CapacityExhausted when the budget has no slot for the first connection,
    and the SQLAlchemy error of a failed first connect (a rejection is recorded first).
    """

    def __init__(
        self,
        directory: TenantDirectory,
        keyring: Keyring,
        cluster_url: Callable[[str], sa.URL],
        pool: PoolSettings,
        *,
        budget: ConnectionBudget,
        backoff: LoginBackoff,
        context_key: Callable[[str], bytes],
        observer: Observer | None = None,
        activity: TenantActivity | None = None,
        writable: bool = True,
    ) -> None:
        # ``writable``: engines of a primary, where a read-only answer means a failover (a
        # lost connection); False for a read replica's, which is read-only by nature.
        self._writable = writable
        self._directory = directory
        self._context_key = context_key
        self._keyring = keyring
        self._cluster_url = cluster_url
        self._pool = pool
        self._budget = budget
        self._backoff = backoff
        self._observer = observer or Observer()
        self._activity = activity if activity is not None else TenantActivity()
        # One compiled-statement cache for every tenant engine of the worker. SQLAlchemy
        # gives each engine its own (500 entries, some 16 kB each): with APP_MAX_ENGINES
        # engines that bound is gigabytes. Entries are keyed by the engine's dialect, so
        # engines do not share hits, but the worker's total is LRU-bounded: at most
        # 1.5 x COMPILED_CACHE_SIZE entries (SQLAlchemy prunes at capacity x 1.5).
        self.compiled_cache: LRUCache[Any, Any] = LRUCache(COMPILED_CACHE_SIZE)
        # The credentials' version each live engine was built from (held weakly).
        self._versions: weakref.WeakKeyDictionary[sa.Engine, tuple[object, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self, tenant_id: uuid.UUID) -> sa.Engine:
        self._backoff.check(tenant_id)
        credentials = self._directory.credentials(tenant_id)
        if credentials is None:
            # Deleted between authentication and now: answer as for an unknown tenant.
            raise AuthenticationFailed("tenant no longer exists")
        try:
            cluster_url = self._cluster_url(credentials.cluster)
        except UnknownCluster:
            logger.error("tenant %s is placed on an unconfigured cluster", tenant_id)
            raise TenantUnavailable(
                "the tenant's cluster is not configured", code="cluster_unknown"
            ) from None
        engine = self.engine_for(credentials, cluster_url)
        engine.dialect.signer = self.signer(credentials.cluster)  # type: ignore[attr-defined]
        # First connect here, outside the registry lock, so a bad password fails now and
        # the pool starts warm.
        try:
            with engine.connect():
                pass
        except BaseException as error:
            engine.dispose()
            if isinstance(error, sa.exc.OperationalError) and is_auth_failure(error):
                self._observer.login_rejected()
                self._backoff.failed(tenant_id, credentials.version)
            raise
        self._backoff.succeeded(tenant_id)
        self._versions[engine] = credentials.version
        return engine

    def signer_key(self, cluster: str) -> bytes:
        """The key tenant contexts on ``cluster`` are signed with (read once per worker)."""
        return self._context_key(cluster)

    def signer(self, cluster: str) -> ContextSigner:
        """What signs a tenant's own connections on ``cluster`` (its key read once per worker)."""
        return ContextSigner(self._context_key(cluster), shared=False)

    def version_of(self, engine: sa.Engine) -> tuple[object, ...] | None:
        """The version of the credentials ``engine`` was built from; None if not ours."""
        return self._versions.get(engine)

    def engine_for(
        self, credentials: TenantCredentials, cluster_url: sa.URL, *, pooled: bool = True
    ) -> sa.Engine:
        """An engine of the tenant's own role on the cluster at ``cluster_url``; not connected.

        ``pooled``: a ``TenantDialect`` engine pooled on the worker's connection budget, for
        serving requests. A move (``control.moving``) asks for ``pooled=False``: plain
        psycopg2 without a pool, outside the budget, because a copy needs a REPEATABLE READ
        snapshot across statements, which TenantDialect's autocommit mode rules out (the
        copy signs its statements itself: ``control.copying``). Raises
        TenantUnavailable if the password cannot be decrypted.
        """
        url = cluster_url.set(username=credentials.db_user, password=self.password(credentials))
        pool_args: dict[str, Any] = {"poolclass": NullPool}
        if pooled:
            url = url.set(drivername=TENANT_DRIVER)
            pool_args = {
                "poolclass": self._budget.pool_class,
                "pool_size": self._pool.pool_size,
                "max_overflow": self._pool.max_overflow,
                "pool_timeout": self._pool.pool_timeout,
            }
        engine = sa.create_engine(
            url,
            **pool_args,
            execution_options={"compiled_cache": self.compiled_cache},
            connect_args={
                "application_name": application_name(credentials.id),
                # No wait on the server longer than these bounds (see app.dbwait).
                **dbwait.connect_args(
                    connect_timeout=self._pool.connect_timeout, io_timeout=self._pool.io_timeout
                ),
            },
        )
        # After the dialect's own connect hook (autocommit), before anyone uses it.
        sa.event.listen(engine, "connect", refuse_unless_logged_in_as(credentials.db_user))
        sa.event.listen(engine, "handle_error", translate_moving)
        if self._writable:
            follow_writable(engine)  # a read-only server (failover) is a lost one
        if pooled:
            sa.event.listen(engine, "checkout", discard_if_closed_by_server)
            sa.event.listen(engine, "connect", self._logged_in(credentials.id))
        return engine

    def _logged_in(self, tenant_id: uuid.UUID) -> Callable[[Any, Any], None]:
        """Pool ``connect`` hook: every new pooled connection is a login as the tenant's role."""

        def record(dbapi_connection: Any, record: Any) -> None:
            self._observer.login()
            self._activity.logged_in(tenant_id)

        return record

    def password(self, credentials: TenantCredentials) -> str:
        """The tenant role's password; raises TenantUnavailable if it cannot be decrypted."""
        try:
            return decrypt_password(self._keyring, credentials)
        except TenantUnavailable:
            self._observer.decrypt_failed()
            raise


# Who the connection is and which backend, in one round trip on connect.
_WHO_AM_I = "SELECT current_user, session_user, pg_backend_pid(), current_setting('search_path')"


def refuse_unless_logged_in_as(role: str) -> Callable[[Any, Any], None]:
    """Pool ``connect`` hook: a new connection that is not ``role`` is closed and refused.

    Asked once per connection, on connect (one round trip; connections are pooled), with
    the backend's pid: the binding of its signed contexts (``<pid>:0``: the owner, who
    verifies them, cannot read a tenant backend's start time). What libpq logs in as can
    differ from the URL's user: a DSN whose query string names another
    user, a service or a whole connection string in ``dbname``, a ``-c role=`` option, or
    ``ALTER ROLE ... SET role`` on the server. Serving a tenant as anyone but its own role
    would be wrong whatever RLS then allows, so the connection is closed and the request
    gets 503 (``TenantUnavailable``, code ``wrong_role``), and the log says what was found.
    """

    def check(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_WHO_AM_I)
            current_user, session_user, pid, search_path = cursor.fetchone()
        if not dbapi_connection.autocommit:
            dbapi_connection.rollback()  # the SELECT opened a transaction: end it
        refuse_wrong_role(dbapi_connection, role, current_user, session_user)
        record.info[BINDING] = f"{int(pid)}:0"
        record.info[PINNED] = pinned(search_path)

    return check


def refuse_wrong_role(
    dbapi_connection: Any, expected: str, current_user: str, session_user: str
) -> None:
    """Close ``dbapi_connection`` and raise TenantUnavailable unless both users are ``expected``."""
    if current_user == expected and session_user == expected:
        return
    logger.error(
        "refused a new connection meant for role %s: the server says session_user=%s "
        "current_user=%s; check the query strings of APP_DATABASE_URL and APP_CLUSTERS "
        "and the role's settings (ALTER ROLE ... SET role)",
        expected,
        session_user,
        current_user,
    )
    dbapi_connection.close()
    raise TenantUnavailable("the connection is not the expected role", code="wrong_role")


def decrypt_password(keyring: Keyring, credentials: TenantCredentials) -> str:
    """The tenant role's password; raises TenantUnavailable if it cannot be decrypted."""
    try:
        return keyring.decrypt_str(
            credentials.db_password_encrypted, tenant_aad(credentials.id, credentials.db_user)
        )
    except CryptoError:
        raise TenantUnavailable(
            "the tenant's database credentials cannot be decrypted", code="credentials"
        ) from None


def application_name(tenant_id: uuid.UUID) -> str:
    """``tp:<tenant>:<pid>``: every backend says which tenant and which process it serves."""
    return f"tp:{tenant_id}:{os.getpid()}"
