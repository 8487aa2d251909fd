"""Sessions bound to one tenant; every transaction starts by naming that tenant for RLS.

The setting is transaction-local (``set_config(..., true)``): pooled connections outlive
requests, and a per-connection setting would leak to the next checkout. It also works
behind PgBouncer in transaction mode.

The same statement calls ``tenant_move_gate()`` (migration 0002), which takes the
tenant's move lock shared for the transaction (an advisory lock: in memory, no write) and
raises SQLSTATE ``TPM01`` if it cannot: a move (``moving.py``) holds it exclusively while
it copies the tenant, so a transaction either ends before the copy starts or fails before
writing where nobody will look; ``translate_moving`` turns that into a 503 with
Retry-After.

It costs no round trip of its own. Tenant engines use :class:`TenantDialect`: psycopg2 in
autocommit mode, with the transaction spelled out in SQL, so that ``BEGIN``, the tenant
setting and the transaction's first statement travel to the server as one simple-query
message (psycopg2 would otherwise send its implicit ``BEGIN`` alone, then the setting
alone, then the statement: three round trips for one).

A read-only session (``read_only=True``: requests with a safe HTTP method) needs no
``BEGIN``, ``COMMIT`` or ``ROLLBACK`` at all. The statements of one simple-query message
run as one implicit transaction, so each statement travels as
``SELECT set_config('app.tenant_id', ...), set_config('transaction_read_only', 'on', true),
tenant_move_gate(); <statement>``: the tenant setting, read-only mode and the move gate
last exactly as long as the statement, and the server is idle again when the answer
arrives. One round trip per statement, nothing at the end. Under READ COMMITTED every
statement reads its own snapshot anyway, so reads lose no consistency; a write fails
(read-only transaction) instead of committing on its own.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import sqlalchemy as sa
from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from sqlalchemy import event, orm
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from app.tenancy.errors import TenantUnavailable

TENANT_DRIVER = "postgresql+tenantpool"
"""The drivername of tenant engine URLs: :class:`TenantDialect`."""
GATEWAY_DRIVER = "postgresql+tenantpool_gateway"
"""The drivername of gateway engine URLs: :class:`GatewayDialect`."""
BINDING = "tenantpool.binding"
"""Key of a gateway connection's ``<pid>:<backend start>`` in its pool record's info."""

MOVING = "TPM01"
"""The SQLSTATE ``tenant_move_gate()`` raises while a move holds the tenant."""

_TENANT_OF_TRANSACTION = "tenantpool.tenant_of_transaction"
# Server (host, port, database) -> dialect attributes its initialize() learned; per process.
_LEARNED: dict[tuple[str | None, int | None, str | None], dict[str, Any]] = {}
_LEARNED_LOCK = threading.Lock()


class TenantSession(orm.Session):
    """An ORM session whose every transaction is for ``tenant_id``.

    ``Tenancy.open_session`` binds it to a connection checked out in advance; ``close()``
    gives that connection back to the tenant's pool, so a closed session is not reused.
    """

    def __init__(
        self, *args: Any, tenant_id: uuid.UUID, read_only: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # str(UUID) is hex digits and hyphens only: safe to embed as a literal below.
        self.info["tenant_id"] = str(tenant_id)
        self.info["read_only"] = read_only

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
        session.info["tenant_id"],
        session.info["read_only"],
    )


def tenant_of_failed_transaction(context: sa.engine.ExceptionContext) -> uuid.UUID | None:
    """The tenant whose transaction raised, from a ``handle_error`` context; None if unknown."""
    connection = context.connection
    tenant = None if connection is None else connection.info.get(_TENANT_OF_TRANSACTION)
    return None if tenant is None else uuid.UUID(tenant[1])


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
    """psycopg2 whose transactions are SQL statements, ``BEGIN`` sent with the first one.

    The DBAPI connection is in autocommit mode, so psycopg2 sends nothing on its own. When
    the server is idle (no transaction open) and SQLAlchemy executes a statement, the
    statement is prefixed with ``BEGIN;`` and, for a :class:`TenantSession` transaction,
    ``SELECT set_config('app.tenant_id', <tenant>, true);`` — the same statements as
    before, in one message. ``COMMIT`` and ``ROLLBACK`` are sent only when the server
    reports an open transaction (libpq tracks that locally, without a round trip), so
    the pool's reset-on-return ends any transaction a holder left open.
    """

    supports_statement_cache = True

    def initialize(self, connection: sa.Connection) -> None:
        """What SQLAlchemy asks a server on an engine's first connect, asked once per server.

        Every tenant engine is a new dialect, and ``initialize`` costs about five round
        trips (version, schema, isolation level, ...) on each tenant's first request. The
        answers depend on the server, not on the role, so the first engine's are reused.
        """
        url = connection.engine.url
        server = (url.host, url.port, url.database)
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
        _end_transaction(dbapi_connection, "COMMIT")

    def do_rollback(self, dbapi_connection: Any) -> None:
        _end_transaction(dbapi_connection, "ROLLBACK")

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        cursor.execute(_opening(cursor, context) + statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        cursor.execute(_opening(cursor, context) + statement)

    def do_executemany(
        self, cursor: Any, statement: str, parameters: Any, context: Any = None
    ) -> None:
        # psycopg2 repeats an executemany statement per row: open the transaction first.
        opening = _opening(cursor, context, many=True)
        if opening:
            cursor.execute(opening)
        super().do_executemany(cursor, statement, parameters, context)  # type: ignore[no-untyped-call]


def _opening(cursor: Any, context: Any, *, many: bool = False) -> str:
    """What must precede the statement: BEGIN (and the tenant) if no transaction is open.

    ``many``: the statement is an executemany, which psycopg2 sends once per row.
    """
    if cursor.connection.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        return ""
    connection: sa.Connection | None = getattr(context, "root_connection", None)
    if connection is None or not connection.in_transaction():
        return ""  # e.g. the dialect's own start-up queries, run outside any transaction
    tenant = connection.info.get(_TENANT_OF_TRANSACTION)
    if tenant is None or tenant[0] is not connection.get_transaction():
        return "BEGIN; "
    _, tenant_id, read_only = tenant
    if read_only:  # one implicit transaction per message: see the module docstring
        if many:  # each row would be a transaction of its own, without the tenant setting
            raise sa.exc.InvalidRequestError("a read-only tenant session cannot executemany")
        return (
            f"SELECT set_config('app.tenant_id', '{tenant_id}', true), "
            "set_config('transaction_read_only', 'on', true), tenant_move_gate(); "
        )
    return f"BEGIN; SELECT set_config('app.tenant_id', '{tenant_id}', true), tenant_move_gate(); "


def _end_transaction(dbapi_connection: Any, command: str) -> None:
    # The pool passes its proxy, which forwards this method to the psycopg2 connection.
    if dbapi_connection.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(command)


class GatewayDialect(TenantDialect):
    """TenantDialect for shared gateway connections: every statement carries the signed context.

    The policy's verifier checks that the context opens the client's message, so it is
    sent with each statement of a transaction, not only its first. ``signer`` is set by the
    gateway pool once the engine exists (``serving/gateway.py``).
    """

    supports_statement_cache = True
    signer: Any = None

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        cursor.execute(self._opening(cursor, context) + statement, parameters)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        cursor.execute(self._opening(cursor, context) + statement)

    def do_executemany(
        self, cursor: Any, statement: str, parameters: Any, context: Any = None
    ) -> None:
        # One message per row, each with its opening: psycopg2 would send the rows bare.
        for row in parameters:
            self.do_execute(cursor, statement, row, context)

    def _opening(self, cursor: Any, context: Any) -> str:
        connection: sa.Connection | None = getattr(context, "root_connection", None)
        if connection is None or not connection.in_transaction():
            return ""  # the dialect's own start-up queries: the gateway can read nothing
        tenant = connection.info.get(_TENANT_OF_TRANSACTION)
        if tenant is None or tenant[0] is not connection.get_transaction():
            raise sa.exc.InvalidRequestError("gateway connections run tenant sessions only")
        _, tenant_id, read_only = tenant
        signed = self.signer.opening(tenant_id, connection.info[BINDING])
        # The move gate is a statement of its own: its EXECUTE privilege is checked as the
        # role that runs it, which is the tenant's only once the first statement ran.
        if read_only:
            return f"{signed}, set_config('transaction_read_only', 'on', true); {_GATE} "
        if cursor.connection.get_transaction_status() == TRANSACTION_STATUS_IDLE:
            # Settings made just before BEGIN in one message belong to its transaction.
            return f"{signed}; BEGIN; {_GATE} "
        return f"{signed}; "


_GATE = "SELECT tenant_move_gate();"

registry.register(TENANT_DRIVER.replace("+", "."), __name__, "TenantDialect")
registry.register(GATEWAY_DRIVER.replace("+", "."), __name__, "GatewayDialect")
