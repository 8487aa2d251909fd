"""Client-side bounds on PostgreSQL waits, against a real server behind a fault proxy."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app import dbwait
from app.db import create_control_engine
from app.dev.cluster import LocalCluster
from tests.faults.proxy import FaultProxy

SLACK = 3.0  # seconds a loaded machine may add to a bound


@pytest.fixture
def proxy(pg_cluster: LocalCluster) -> Iterator[FaultProxy]:
    with FaultProxy(pg_cluster.port) as running:
        yield running


@pytest.fixture
def engine(owner_url: str, proxy: FaultProxy) -> Iterator[sa.Engine]:
    dbwait.install()
    url = make_url(owner_url).set(drivername="postgresql+psycopg2", port=proxy.port)
    bounded = create_control_engine(url, connect_timeout=2, io_timeout=1)
    yield bounded
    bounded.dispose()


def _elapsed(started: float) -> float:
    return time.monotonic() - started


def test_dbwait_round_trip_within_bound_succeeds(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_sleep(0.5), 1")).one()[1] == 1


def test_dbwait_silent_server_fails_the_query_at_io_timeout_then_recovers(
    engine: sa.Engine, proxy: FaultProxy
) -> None:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="no answer from the database"):
            connection.execute(sa.text("SELECT 1"))
        assert 1 <= _elapsed(started) < 1 + SLACK
        assert connection.invalidated
    proxy.heal()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar() == 1


def test_dbwait_silent_server_fails_the_connect_at_connect_timeout(
    engine: sa.Engine, proxy: FaultProxy
) -> None:
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="no connect from the database"):
        engine.connect()
    assert 2 <= _elapsed(started) < 2 + SLACK


def test_dbwait_install_is_idempotent() -> None:
    dbwait.install()
    dbwait.install()
    assert dbwait.psycopg2.extensions.get_wait_callback() is dbwait.wait


def test_dbwait_connections_carry_keepalives_and_a_tcp_user_timeout(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        dsn = connection.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]

    assert dsn["keepalives"] == "1"
    assert dsn["keepalives_idle"] == str(dbwait.KEEPALIVE_IDLE)
    assert dsn["keepalives_interval"] == str(dbwait.KEEPALIVE_INTERVAL)
    assert dsn["keepalives_count"] == str(dbwait.KEEPALIVE_COUNT)
    # Below connect_timeout (2 s here): a host that swallows packets fails in the kernel
    # first, and libpq tries the next host of a list.
    assert 0 < int(dsn["tcp_user_timeout"]) < 2000
