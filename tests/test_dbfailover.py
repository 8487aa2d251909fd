"""A server that refuses writes is a lost server for a writing engine (app/dbfailover.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa

from app import dbfailover, dbwait
from app.db import create_control_engine
from config import psycopg2_url


@pytest.fixture
def engine(owner_url: str) -> Iterator[sa.Engine]:
    dbwait.install()
    made = create_control_engine(psycopg2_url(owner_url), connect_timeout=5, io_timeout=10)
    yield made
    made.dispose()


def _pid(connection: sa.Connection) -> int:
    return int(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_dbfailover_write_in_a_read_only_transaction_keeps_the_pool(engine: sa.Engine) -> None:
    # What a write in a GET does: the transaction is read-only, the server is not.
    with engine.connect() as connection:
        pid = _pid(connection)
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        with pytest.raises(sa.exc.DBAPIError) as raised:
            connection.exec_driver_sql("CREATE TEMPORARY TABLE t (x int)")
        assert raised.value.orig.pgcode == dbfailover.READ_ONLY_SQLSTATE  # type: ignore[union-attr]
        assert not raised.value.connection_invalidated

    with engine.connect() as connection:
        assert _pid(connection) == pid


def test_dbfailover_server_reporting_read_only_drops_the_pool(engine: sa.Engine) -> None:
    with engine.connect() as first, engine.connect() as second:
        before = {_pid(first), _pid(second)}
    with engine.connect() as connection:
        # The server reports default_transaction_read_only=on with this answer, as it
        # does after a demotion: the statement fails as a lost connection.
        with pytest.raises(sa.exc.DBAPIError) as raised:
            connection.exec_driver_sql("SET default_transaction_read_only = on")
        assert raised.value.connection_invalidated
        assert isinstance(raised.value.orig, dbfailover.ServerReadOnly)

    # Every connection the pool held before is gone too, not only the one that failed.
    with engine.connect() as first, engine.connect() as second:
        assert {_pid(first), _pid(second)}.isdisjoint(before)
        assert dbfailover.server_read_only(first.connection.dbapi_connection) is False


def test_dbfailover_checkout_discards_a_connection_whose_server_said_read_only(
    owner_url: str,
) -> None:
    connection = psycopg2.connect(owner_url)
    try:
        dbfailover.discard_if_read_only(connection, None, None)  # writable: kept
        with connection.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")
        with pytest.raises(sa.exc.DisconnectionError):
            dbfailover.discard_if_read_only(connection, None, None)
    finally:
        connection.close()
