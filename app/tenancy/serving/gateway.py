"""Shared connections (DESIGN section 3a): one small pool of gateway connections per cluster.

A gateway connection logs in as the database's gateway role (NOINHERIT, no grants), and
every statement it sends for a tenant opens with that tenant's signed context, which also
switches to the tenant's role for the transaction (``serving/context.py``). The signature
binds the backend: its pid and a number drawn for it (its start time on a standby), which the
pool reads on connect, and again if a tenant's SQL made it stale. Each tenant table's policy
verifies it (``tp_private.tenant_context_ok()``), and checks that it opens the client's
message, so injected SQL that switches role and tenant, or replays a signature read in
``pg_stat_activity``, sees nothing: see docs/security.md, "Two ways to reach a tenant".

The pools are this module's; the credentials and key come from a ``fetch`` callable (the
control plane's ``gateways.gateway_access``), so the data path imports nothing of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, orm

from app import dbwait
from app.crypto import CryptoError
from app.dbfailover import follow_writable
from app.dbwait import discard_if_closed_by_server
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.context import ContextSigner, TenantContext
from app.tenancy.serving.engines import PoolSettings, refuse_wrong_role
from app.tenancy.serving.forks import reset_in_child
from app.tenancy.serving.observer import Observer
from app.tenancy.serving.session import (
    BINDING,
    CONTEXT_REFUSED,
    GATEWAY_DRIVER,
    PINNED,
    TenantSession,
    pinned,
    tenant_of_failed_transaction,
    translate_moving,
)

__all__ = ["GatewayAccess", "Gateways", "backend_binding"]

logger = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE = 1.0
"""Seconds a cluster whose gateway could not be set up is answered 503 without trying."""

# The binding as the verifier recomputes it (migration 0010), and who the connection is, in
# the same round trip: see engines.refuse_wrong_role. RESET ROLE first: when the connection
# is bound again, a tenant's SQL may have left a role set for the session.
_BINDING_QUERY = (
    "RESET ROLE; SELECT tp_private.backend_binding(), current_user, session_user, "
    "current_setting('search_path')"
)
# What a tenant's injected SQL could change at session level (SET, set_config(..., false)) on
# a shared connection, to the harm of the tenants served on it later. search_path is reset by
# each transaction's opening (session.pinned); these, which
# the server reports on every change, are compared when the connection comes back, and a
# connection whose settings changed is closed rather than pooled.
_REPORTED = (
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "client_encoding",
    "standard_conforming_strings",
    "default_transaction_read_only",
)
_REPORTED_AT_CONNECT = "tenantpool.reported"
# A shared transaction whose role switch was refused: the gateway is no longer a member
# (tenant suspended, being moved: 42501) or the role is gone (deleted, moved: 22023). Told
# apart from other errors with these SQLSTATEs (an RLS violation is 42501 too) by where the
# server raised it, which, unlike the message, does not depend on lc_messages.
_ROLE_REFUSED = frozenset({"42501", "22023"})
_ROLE_CHECK = "call_string_check_hook"


@dataclass(frozen=True)
class GatewayAccess:
    """How to reach a cluster's gateway role, and the key its tenant contexts are signed with."""

    role: str
    url: sa.URL
    key: bytes = b""

    def __repr__(self) -> str:  # never the password or the key
        return f"GatewayAccess(role={self.role!r}, url={self.url!r})"


def backend_binding(dbapi_connection: Any, *, role: str) -> tuple[str, str]:
    """The binding of the backend behind a DB-API connection (``<pid>:n<number>`` on a
    primary, ``<pid>:s<start in µs>`` on a standby), and its search_path.

    Raises TenantUnavailable (and closes the connection) unless it is logged in as ``role``,
    the gateway role: a connection that is anyone else is never used to serve a tenant.
    """
    with dbapi_connection.cursor() as cursor:
        cursor.execute(_BINDING_QUERY)
        binding, current_user, session_user, search_path = cursor.fetchone()
    refuse_wrong_role(dbapi_connection, role, current_user, session_user)
    return str(binding), search_path


class _GatewayPool:
    """One cluster's gateway engine and session factory."""

    def __init__(
        self,
        access: GatewayAccess,
        pool: PoolSettings,
        *,
        size: int,
        statement_timeout_ms: int,
        on_refused: Callable[[uuid.UUID], object],
        observer: Observer,
        writable: bool,
    ) -> None:
        self.role = access.role
        self.engine = sa.create_engine(
            access.url.set(drivername=GATEWAY_DRIVER),
            pool_size=size,
            max_overflow=0,
            pool_timeout=pool.pool_timeout,
            connect_args={
                "application_name": f"tp:shared:{os.getpid()}",
                **dbwait.connect_args(
                    connect_timeout=pool.connect_timeout, io_timeout=pool.io_timeout
                ),
            },
        )
        self.engine.dialect.binder = (  # type: ignore[attr-defined]
            lambda dbapi_connection: backend_binding(dbapi_connection, role=access.role)[0]
        )
        self.engine.dialect.signer = ContextSigner(  # type: ignore[attr-defined]
            access.key, shared=True, statement_timeout_ms=statement_timeout_ms
        )
        event.listen(self.engine, "connect", _binding_of(access.role))
        event.listen(self.engine, "checkout", discard_if_closed_by_server)
        event.listen(self.engine, "checkin", _close_if_changed)
        event.listen(self.engine, "handle_error", translate_moving)
        event.listen(self.engine, "handle_error", _refusals(on_refused))
        if writable:
            follow_writable(self.engine)  # a read-only server (failover) is a lost one
        _count_connections(self.engine, observer)
        self.sessionmaker = orm.sessionmaker(
            bind=self.engine, class_=TenantSession, expire_on_commit=False
        )

    def session(self, context: TenantContext, read_only: bool) -> TenantSession:
        connection = self.engine.connect()
        tenant_id = uuid.UUID(context.tenant_id)
        return self.sessionmaker(
            tenant_id=tenant_id, context=context, read_only=read_only, bind=connection
        )


_COUNTED_OUT = "tp_counted_out"


def _count_connections(engine: sa.Engine, observer: Observer) -> None:
    """Report the pool's connections as they open, close, go out and come back."""

    def opened(*args: Any) -> None:
        observer.gateway_connections(opened=1)

    def closed(*args: Any) -> None:
        observer.gateway_connections(opened=-1)

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        record.record_info[_COUNTED_OUT] = True
        observer.gateway_connections(in_use=1)

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy also reports a checkin for a checkout that failed half-way (a pooled
        # connection discarded, then no new one: a failover): only what went out comes back.
        if record.record_info.pop(_COUNTED_OUT, False):
            observer.gateway_connections(in_use=-1)

    event.listen(engine, "connect", opened)
    event.listen(engine, "close", closed)
    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)


def _binding_of(role: str) -> Callable[[Any, Any], None]:
    """Pool ``connect`` hook: check the new connection is ``role`` and remember its binding."""

    def remember(dbapi_connection: Any, record: Any) -> None:
        record.info[BINDING], search_path = backend_binding(dbapi_connection, role=role)
        record.info[PINNED] = pinned(search_path)
        record.info[_REPORTED_AT_CONNECT] = _reported(dbapi_connection)

    return remember


def _reported(dbapi_connection: Any) -> tuple[str | None, ...]:
    return tuple(dbapi_connection.get_parameter_status(name) for name in _REPORTED)


def _close_if_changed(dbapi_connection: Any, record: Any) -> None:
    """Pool ``checkin`` hook: a connection whose session settings a tenant changed is closed."""
    if dbapi_connection is None or record.info.get(_REPORTED_AT_CONNECT) == _reported(
        dbapi_connection
    ):
        return
    logger.warning(
        "closed a shared connection whose session settings a tenant's SQL changed (%s)",
        ", ".join(_REPORTED),
    )
    record.invalidate()


def _refusals(on_refused: Callable[[uuid.UUID], object]) -> Callable[[Any], None]:
    """``handle_error`` hook: a refused role switch or context becomes a 503, never a 500."""

    def translate(context: sa.engine.ExceptionContext) -> None:
        error = context.original_exception
        code = getattr(error, "pgcode", None)
        diag = getattr(error, "diag", None)
        role_refused = code in _ROLE_REFUSED and getattr(diag, "source_function", "") == _ROLE_CHECK
        if role_refused or code == CONTEXT_REFUSED:
            tenant_id = tenant_of_failed_transaction(context)
            if code == CONTEXT_REFUSED:
                # A bug or an attack, never a normal event: say so loudly.
                logger.error("a tenant context did not verify on a shared connection")
            if tenant_id is not None:
                on_refused(tenant_id)  # its record may be stale (suspended, deleted, moved)
            raise TenantUnavailable(
                "the tenant cannot be served right now", retry_after=1, code="tenant_unavailable"
            ) from None

    return translate


class Gateways:
    """This worker's shared connections: one gateway pool per cluster, made on first use.

    Thread safe. ``self._lock`` guards the pools and the recent failures; a pool is built
    (credentials fetched, maybe the role's password set) under a per-cluster lock, so a slow
    cluster delays no other, and never under ``self._lock``. A cluster whose set-up failed
    is answered 503 for a second without trying again, so a broken cluster cannot turn
    every request into a login attempt.
    """

    def __init__(
        self,
        fetch: Callable[[str], GatewayAccess],
        pool: PoolSettings,
        *,
        size: int,
        statement_timeout_ms: int,
        on_refused: Callable[[uuid.UUID], object] = lambda tenant_id: None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
        writable: bool = True,
    ) -> None:
        self._writable = writable  # as TenantEngineFactory's: False on a read replica
        self._fetch = fetch
        self._observer = observer or Observer()
        self._pool = pool
        self.size = size
        self._statement_timeout_ms = statement_timeout_ms
        self._on_refused = on_refused
        self._clock = clock
        self._lock = threading.Lock()
        self._pools: dict[str, _GatewayPool] = {}
        self._creating: dict[str, threading.Lock] = {}
        self._failed_until: dict[str, float] = {}
        reset_in_child(self)

    def session(self, context: TenantContext, cluster: str, *, read_only: bool) -> TenantSession:
        """A session for ``context`` on a gateway connection of ``cluster``; caller closes it.

        Raises TenantUnavailable when the cluster's gateway cannot be set up, and what
        connecting raises (a pool timeout, the database unreachable).
        """
        return self._pool_of(cluster).session(context, read_only)

    def clusters(self) -> list[str]:
        """The clusters this worker holds a gateway pool for."""
        with self._lock:
            return sorted(self._pools)

    def checked_out(self, cluster: str) -> int:
        """Gateway connections of ``cluster`` in use right now (0 without a pool)."""
        with self._lock:
            pool = self._pools.get(cluster)
        return 0 if pool is None else pool.engine.pool.checkedout()  # type: ignore[attr-defined]

    def dispose(self, *, close: bool = True) -> None:
        """Dispose every pool (worker exit; ``close=False`` in a forked child)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.engine.dispose(close=close)

    def _pool_of(self, cluster: str) -> _GatewayPool:
        with self._lock:
            pool = self._pools.get(cluster)
            if pool is not None:
                return pool
            creating = self._creating.setdefault(cluster, threading.Lock())
        with creating:
            with self._lock:
                pool = self._pools.get(cluster)
                if pool is not None:
                    return pool
                failed_until = self._failed_until.get(cluster, 0.0)
            if self._clock() < failed_until:
                raise _unavailable(cluster)
            try:
                access = self._fetch(cluster)
                pool = _GatewayPool(
                    access,
                    self._pool,
                    size=self.size,
                    statement_timeout_ms=self._statement_timeout_ms,
                    on_refused=self._on_refused,
                    observer=self._observer,
                    writable=self._writable,
                )
            except Exception as error:
                if isinstance(error, CryptoError):
                    self._observer.decrypt_failed()
                logger.exception("cannot set up shared connections to cluster %s", cluster)
                with self._lock:
                    self._failed_until[cluster] = self._clock() + _RETRY_AFTER_FAILURE
                raise _unavailable(cluster) from None
            with self._lock:
                self._pools[cluster] = pool
                self._failed_until.pop(cluster, None)
            self._observer.gateway_pool_created(self.size)
            logger.info("shared connections to cluster %s as %s", cluster, pool.role)
            return pool

    def _reset_after_fork(self) -> None:
        """In a forked child: the pools' connections are the parent's; forget them."""
        pools = list(self._pools.values())
        self._lock = threading.Lock()
        self._pools, self._creating, self._failed_until = {}, {}, {}
        for pool in pools:
            pool.engine.dispose(close=False)


def _unavailable(cluster: str) -> TenantUnavailable:
    return TenantUnavailable(
        f"shared connections to cluster {cluster} cannot be set up", code="database_unavailable"
    )
