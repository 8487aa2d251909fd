"""Sessions bound to one tenant; every statement opens with that tenant's signed context.

The context (``serving/context.py``: the tenant, the end user, a signature) is set with
``set_config(..., true)``, transaction-local: pooled connections outlive requests, and a
per-connection setting would leak to the next checkout. It is sent with every statement,
not only a transaction's first, because the verifier requires it to open the client's
message. Then ``tenant_move_gate()`` (migration 0002) takes the tenant's move lock shared
for the transaction (an advisory lock: in memory, no write) or raises SQLSTATE ``TPM01``: a
move (``moving.py``) holds it exclusively while it copies the tenant, so a transaction
either ends before the copy starts or fails before writing where nobody will look;
``translate_moving`` turns that into a 503 with Retry-After.

It costs no round trip of its own. Tenant engines use :class:`TenantDialect`: psycopg2 in
autocommit mode, with the transaction spelled out in SQL, so that the context, ``BEGIN``,
the gate and the transaction's first statement travel to the server as one simple-query
message (settings made just before ``BEGIN`` in one message belong to its transaction).

A read-only session (``read_only=True``: requests with a safe HTTP method) needs no
``BEGIN``, ``COMMIT`` or ``ROLLBACK`` at all. The statements of one simple-query message
run as one implicit transaction, so each statement travels as ``<context>,
set_config('transaction_read_only', 'on', true); SELECT tenant_move_gate(); <statement>``:
the context, read-only mode and the move gate last exactly as long as the statement, and
the server is idle again when the answer arrives. One round trip per statement, nothing at
the end. Under READ COMMITTED every statement reads its own snapshot anyway, so reads lose
no consistency; a write fails (read-only transaction) instead of committing on its own.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import sqlalchemy as sa
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from sqlalchemy import event, orm
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from app.dbhosts import hosts
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.consistency import format_token, lsn_from_text, record_end
from app.tenancy.serving.context import ContextSigner, TenantContext

TENANT_DRIVER = "postgresql+tenantpool"
"""The drivername of tenant engine URLs: :class:`TenantDialect`."""
GATEWAY_DRIVER = "postgresql+tenantpool_gateway"
"""The drivername of gateway engine URLs: :class:`GatewayDialect`."""
BINDING = "tenantpool.binding"
"""Key of a connection's binding (``<pid>:n<number>`` on a primary's gateway connection,
``<pid>:s<backend start>`` on a standby's, ``<pid>:0`` for a tenant's own connection) in its
pool record's info: what its signatures are made for."""

PINNED = "tenantpool.pinned"
"""Key of what a connection's opening also sets (:func:`pinned`), in its pool record's info."""

COMMIT_POSITION = "tenantpool.commit_position"
"""Key, in a connection's info, of the WAL position its last ``COMMIT`` reached (an int)."""

MOVING = "TPM01"
"""The SQLSTATE ``tenant_move_gate()`` raises while a move holds the tenant."""

CONTEXT_REFUSED = "TPC01"
"""The SQLSTATE the verifier raises for a context that is claimed and does not verify."""

logger = logging.getLogger(__name__)

_TENANT_OF_TRANSACTION = "tenantpool.tenant_of_transaction"
# Server (host, port, database) -> dialect attributes its initialize() learned; per process.
_LEARNED: dict[tuple[object, ...], dict[str, Any]] = {}
_LEARNED_LOCK = threading.Lock()


class TenantSession(orm.Session):
    """An ORM session whose every transaction is for ``tenant_id``.

    ``Tenancy.open_session`` binds it to a connection checked out in advance; ``close()``
    gives that connection back to the tenant's pool, so a closed session is not reused.
    """

    def __init__(
        self,
        *args: Any,
        tenant_id: uuid.UUID,
        read_only: bool = False,
        context: TenantContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # The tenant itself (an API key) unless an end user's context is given.
        self.info["context"] = context or TenantContext.of_tenant(tenant_id)
        self.info["read_only"] = read_only
        if isinstance(self.bind, sa.Connection):
            self.bind.info.pop(COMMIT_POSITION, None)  # a former holder's commit

    def commit_position(self) -> int | None:
        """The WAL position this session's last commit reached; None if it committed nothing.

        Everything the session committed is on any server that has replayed that far
        (``consistency.py``).
        """
        bind = self.bind
        # An invalidated connection (lost mid-request) would try to reconnect for its info.
        if not isinstance(bind, sa.Connection) or bind.closed or bind.invalidated:
            return None
        position: int | None = bind.info.get(COMMIT_POSITION)
        return position

    def consistency_token(self) -> str | None:
        """The ``X-Consistency-Token`` of what this session committed; None: nothing (or its
        cluster unknown). No I/O."""
        position = self.commit_position()
        cluster: str | None = self.info.get("cluster")
        if position is None or cluster is None:
            return None
        return format_token(position, cluster)

    def close(self) -> None:
        """End the session and return its connection, if it was given one, to the pool."""
        try:
            super().close()
        finally:
            if isinstance(self.bind, sa.Connection):
                self.bind.close()


@event.listens_for(TenantSession, "after_begin")
def _set_tenant(session: orm.Session, transaction: object, connection: sa.Connection) -> None:
    # Nothing is sent here: TenantDialect puts the setting in front of the transaction's
    # first statement. Keyed by the connection's transaction so that it can never apply
    # to a later transaction of the pooled connection.
    connection.info[_TENANT_OF_TRANSACTION] = (
        connection.get_transaction(),
        session.info["context"],
        session.info["read_only"],
    )


def pinned(search_path: str) -> str:
    """The opening's reset of ``search_path`` to ``search_path``, its value at log-in.

    SQL injected into one transaction may change it for the session (``SET search_path``),
    and PostgreSQL 15 does not report that to the client: reset for every transaction, it
    cannot make a later one's names (the move gate, the tables) mean anything else, on a
    gateway connection for the next tenant, on a tenant's own for its next request.
    """
    quoted = search_path.replace("'", "''")
    return f", set_config('search_path', '{quoted}', true)"


def tenant_of_failed_transaction(context: sa.engine.ExceptionContext) -> uuid.UUID | None:
    """The tenant whose transaction raised, from a ``handle_error`` context; None if unknown."""
    connection = context.connection
    tenant = None if connection is None else connection.info.get(_TENANT_OF_TRANSACTION)
    return None if tenant is None else uuid.UUID(tenant[1].tenant_id)


def translate_moving(context: sa.engine.ExceptionContext) -> None:
    """``handle_error`` hook of tenant engines: the move gate's error becomes a 503."""
    if getattr(context.original_exception, "pgcode", None) == MOVING:
        raise TenantUnavailable(
            "the tenant is being moved to another cluster", retry_after=1, code="tenant_moving"
        ) from None


def tenant_sessionmaker(engine: sa.Engine) -> orm.sessionmaker[TenantSession]:
    """The session factory of one tenant engine; call it with ``tenant_id=``."""
    return orm.sessionmaker(bind=engine, class_=TenantSession, expire_on_commit=False)


class TenantDialect(PGDialect_psycopg2):
    """psycopg2 whose transactions are SQL statements, each opened by the tenant's context.

    The DBAPI connection is in autocommit mode, so psycopg2 sends nothing on its own. Each
    statement of a :class:`TenantSession` transaction is prefixed with the signed context
    (``signer``, set by whoever made the engine) and, on an idle server, ``BEGIN`` and the
    move gate: all in one message. A statement outside a tenant session (the dialect's own
    start-up queries, tests' raw connections) gets only ``BEGIN`` when one is due.
    ``COMMIT`` and ``ROLLBACK`` are sent only when the server reports an open transaction
    (libpq tracks that locally, without a round trip), so the pool's reset-on-return ends
    any transaction a holder left open.
    """

    supports_statement_cache = True
    signer: ContextSigner | None = None

    def initialize(self, connection: sa.Connection) -> None:
        """What SQLAlchemy asks a server on an engine's first connect, asked once per server.

        Every tenant engine is a new dialect, and ``initialize`` costs about five round
        trips (version, schema, isolation level, ...) on each tenant's first request. The
        answers depend on the server, not on the role, so the first engine's are reused.
        """
        url = connection.engine.url
        server = (hosts(url), url.database)  # every host of a multi-host DSN
        with _LEARNED_LOCK:
            learned = _LEARNED.get(server)
        if learned is not None:
            self.__dict__.update(learned)
            return
        before = dict(self.__dict__)
        super().initialize(connection)  # type: ignore[no-untyped-call]
        learned = {
            name: value
            for name, value in self.__dict__.items()
            if name not in before or before[name] is not value
        }
        with _LEARNED_LOCK:
            _LEARNED.setdefault(server, learned)

    def on_connect(self) -> Any:
        inherited = super().on_connect()  # type: ignore[no-untyped-call]  # SQLAlchemy's is untyped

        def connect(dbapi_connection: Any) -> None:
            if inherited is not None:
                inherited(dbapi_connection)
            dbapi_connection.autocommit = True

        return connect

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        # psycopg2's own isolation setting turns autocommit off, and psycopg2 would then
        # send a second BEGIN of its own before ours.
        raise NotImplementedError(
            "tenant engines keep psycopg2 in autocommit mode: run SET TRANSACTION "
            "ISOLATION LEVEL as the transaction's first statement instead"
        )

    def do_begin(self, dbapi_connection: Any) -> None:
        """Nothing yet: ``BEGIN`` goes out with the transaction's first statement."""

    def do_commit(self, dbapi_connection: Any) -> None:
        # The commit's WAL position in the same message: read-your-writes costs no round
        # trip (consistency.py). NULL on a standby, where nothing can have been written.
        if dbapi_connection.get_transaction_status() == TRANSACTION_STATUS_IDLE:
            return
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_COMMIT)
            row = cursor.fetchone()
        # The pool's proxy: its info is the pooled connection's (psycopg2's own is not a dict).
        info = getattr(dbapi_connection, "info", None)
        if row is not None and row[0] is not None and isinstance(info, dict):
            info[COMMIT_POSITION] = record_end(lsn_from_text(row[0]))

    def do_rollback(self, dbapi_connection: Any) -> None:
        _end_transaction(dbapi_connection, "ROLLBACK")

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        self._send(cursor, statement, parameters, context)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        self._send(cursor, statement, None, context)

    def do_executemany(
        self, cursor: Any, statement: str, parameters: Any, context: Any = None
    ) -> None:
        # One message per row, each with its opening: psycopg2 would send the rows bare.
        for row in parameters:
            self._send(cursor, statement, row, context, many=True)

    def _send(
        self, cursor: Any, statement: str, parameters: Any, context: Any, *, many: bool = False
    ) -> None:
        cursor.execute(self._opening(cursor, context, many=many) + statement, parameters)

    def _opening(self, cursor: Any, context: Any, *, many: bool = False) -> str:
        """What must precede the statement in its message (see the module docstring)."""
        connection: sa.Connection | None = getattr(context, "root_connection", None)
        if connection is None or not connection.in_transaction():
            return ""  # the dialect's own start-up queries, run outside any transaction
        idle = cursor.connection.get_transaction_status() == TRANSACTION_STATUS_IDLE
        tenant = connection.info.get(_TENANT_OF_TRANSACTION)
        if tenant is None or tenant[0] is not connection.get_transaction():
            return self._untenanted(idle)
        if self.signer is None:
            raise sa.exc.InvalidRequestError("a tenant engine needs a signer for its context")
        _, tenant_context, read_only = tenant
        signed = self.signer.opening(tenant_context, connection.info[BINDING])
        signed += connection.info.get(PINNED, "")
        # The move gate is a statement of its own: its EXECUTE privilege is checked as the
        # role that runs it, which on a gateway connection is the tenant's only once the
        # opening ran.
        if read_only:  # one implicit transaction per message: see the module docstring
            if many:  # each row would be a transaction of its own
                raise sa.exc.InvalidRequestError("a read-only tenant session cannot executemany")
            return f"{signed}, set_config('transaction_read_only', 'on', true); {_GATE} "
        if idle:
            return f"{signed}; BEGIN; {_GATE} "
        return f"{signed}; "

    def _untenanted(self, idle: bool) -> str:
        return "BEGIN; " if idle else ""


def _end_transaction(dbapi_connection: Any, command: str) -> None:
    # The pool passes its proxy, which forwards this method to the psycopg2 connection.
    if dbapi_connection.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(command)


class GatewayDialect(TenantDialect):
    """TenantDialect for shared gateway connections, which run tenant sessions only.

    Outside a tenant session the gateway would run as itself, which can read nothing; a
    statement there is a bug, refused before it is sent.
    """

    supports_statement_cache = True
    binder: Callable[[Any], str] | None = None
    """Binds a DB-API connection to its backend again: its new binding (set by its pool)."""

    def _untenanted(self, idle: bool) -> str:
        raise sa.exc.InvalidRequestError("gateway connections run tenant sessions only")

    def _send(
        self, cursor: Any, statement: str, parameters: Any, context: Any, *, many: bool = False
    ) -> None:
        """Send, and once more on a connection bound again if its binding had gone stale.

        A tenant's SQL can make a gateway connection's binding stale for whoever uses it
        next (``DISCARD SEQUENCES``, or drawing a new number: context_sql.BACKEND_BINDING),
        never make it verify for another backend. A statement that opened its transaction
        and failed for that alone has done nothing: the connection is bound again and the
        statement sent once more, so the next tenant does not pay for the first one's SQL.
        """
        opens = cursor.connection.get_transaction_status() == TRANSACTION_STATUS_IDLE
        try:
            super()._send(cursor, statement, parameters, context, many=many)
        except psycopg2.Error as error:
            if not (opens and self.binder is not None and _binding_stale(error)):
                raise
            dbapi_connection = cursor.connection
            _end_transaction(dbapi_connection, "ROLLBACK")
            context.root_connection.info[BINDING] = self.binder(dbapi_connection)
            logger.warning(
                "bound a shared connection to its backend again: SQL run on it earlier "
                "made its binding stale (SQLSTATE %s)",
                error.pgcode,
            )
            super()._send(cursor, statement, parameters, context, many=many)


def _binding_stale(error: psycopg2.Error) -> bool:
    """Whether ``error`` says the backend's number is not the one the context was signed for."""
    if error.pgcode == CONTEXT_REFUSED:
        return True
    return error.pgcode == "55000" and error.diag.source_function == "currval_oid"


_GATE = "SELECT tenant_move_gate();"
_COMMIT = (
    "COMMIT; SELECT CASE WHEN pg_is_in_recovery() THEN NULL "
    "ELSE pg_current_wal_insert_lsn()::text END"
)

registry.register(TENANT_DRIVER.replace("+", "."), __name__, "TenantDialect")
registry.register(GATEWAY_DRIVER.replace("+", "."), __name__, "GatewayDialect")
