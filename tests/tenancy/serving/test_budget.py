"""ConnectionBudget with real PostgreSQL connections: the count is right whatever closes them.

Engines here connect as the owner role (the budget does not care which role), each with
its own ``application_name`` so the server can be asked what is really open.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import sqlalchemy as sa

from app.tenancy.errors import CapacityExhausted
from app.tenancy.serving.budget import ConnectionBudget
from app.tenancy.serving.observer import Observer
from config import psycopg2_url
from tests.conftest import ClusterFactory
from tests.support import eventually

GUARD = 10.0


class Recorder(Observer):
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.in_use: list[int] = []

    def budget_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def budget_in_use(self, count: int) -> None:
        self.in_use.append(count)


@pytest.fixture
def tag() -> str:
    """A prefix of application names no other test uses."""
    return f"bt-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_engine(owner_url: str, tag: str) -> Iterator[Callable[..., sa.Engine]]:
    made: list[sa.Engine] = []

    def make(budget: ConnectionBudget, name: str, *, pool_size: int = 2) -> sa.Engine:
        engine = sa.create_engine(
            psycopg2_url(owner_url),
            poolclass=budget.pool_class,
            pool_size=pool_size,
            max_overflow=2,
            pool_timeout=GUARD,
            pool_pre_ping=True,
            connect_args={"application_name": f"{tag}-{name}"},
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def server(owner_url: str, tag: str) -> Iterator[Callable[[], list[str]]]:
    """The application names of this test's backends, as the server sees them."""
    connection = psycopg2.connect(owner_url)
    connection.autocommit = True

    def names() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"{tag}-%",),
            )
            return sorted(name.removeprefix(f"{tag}-") for (name,) in cursor.fetchall())

    yield names
    connection.close()


def test_budget_filling_the_server_exactly_never_overflows_it(
    cluster_factory: ClusterFactory,
) -> None:
    """Budget = every slot the server gives non-superusers, under constant churn.

    One connection too many, even for a moment (a new backend starting before a closed
    one has exited), and PostgreSQL answers "remaining connection slots are reserved".
    """
    cluster = cluster_factory(max_connections=10)  # 3 reserved for superusers: 7 for us
    url = psycopg2_url(cluster.bootstrap_owner("budget", "budget-test-password", "budget"))
    budget = ConnectionBudget(7, timeout=GUARD)
    engines = [
        sa.create_engine(url, poolclass=budget.pool_class, pool_size=2, pool_timeout=GUARD)
        for _ in range(12)
    ]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(15):
                with chooser.choice(engines).connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
        except BaseException as error:
            errors.append(error)

    try:
        workers = [threading.Thread(target=work, args=(seed,), daemon=True) for seed in range(10)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(GUARD * 3)
        assert errors == []
        assert budget.peak == 7
        assert budget.closed_to_make_room > 0
        assert "remaining connection slots" not in cluster.log_path.read_text()
    finally:
        for engine in engines:
            engine.dispose()
    assert budget.in_use == 0


def test_budget_in_use_matches_server_backends(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    budget = ConnectionBudget(3, timeout=GUARD)
    engines = [make_engine(budget, f"t{number}") for number in range(4)]
    busy = [engine.connect() for engine in engines[:2]]
    with engines[2].connect():
        pass

    assert budget.in_use == len(server()) == 3
    with engines[3].connect():
        assert budget.in_use == len(server()) == 3
    for connection in busy:
        connection.close()


def test_budget_makes_room_by_closing_idle_connection_of_another_pool(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    budget = ConnectionBudget(1, timeout=GUARD)
    a, b = make_engine(budget, "a"), make_engine(budget, "b")
    with a.connect():
        pass  # a keeps it idle in its pool

    started = time.monotonic()
    with b.connect():
        assert server() == ["b"]

    assert time.monotonic() - started < 1.0  # made room, did not wait for a timeout
    assert budget.closed_to_make_room == 1
    assert a.pool.checkedin() == 0


def test_budget_makes_room_in_least_recently_returned_pool_first(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    budget = ConnectionBudget(2, timeout=GUARD)
    a, b, c = (make_engine(budget, name) for name in "abc")
    with a.connect():
        pass
    with b.connect():
        pass

    with c.connect():
        assert server() == ["b", "c"]


def test_budget_busy_connections_make_caller_wait_then_capacity_exhausted(
    make_engine: Callable[..., sa.Engine],
) -> None:
    recorder = Recorder()
    budget = ConnectionBudget(1, timeout=0.3, observer=recorder)
    a, b = make_engine(budget, "a"), make_engine(budget, "b")

    with a.connect():
        started = time.monotonic()
        with pytest.raises(CapacityExhausted) as raised:
            b.connect()

    assert time.monotonic() - started >= 0.3
    assert raised.value.retry_after == 1
    assert budget.exhausted == 1
    assert budget.in_use == 1  # a's connection, idle now; b's reservation was given back


def test_budget_waiter_gets_slot_once_busy_connection_is_returned(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    recorder = Recorder()
    budget = ConnectionBudget(1, timeout=GUARD, observer=recorder)
    a, b = make_engine(budget, "a"), make_engine(budget, "b")
    busy = a.connect()
    got: list[list[str]] = []

    def wait_for_b() -> None:
        with b.connect():
            got.append(server())

    waiter = threading.Thread(target=wait_for_b, daemon=True)
    waiter.start()
    time.sleep(0.2)
    assert got == []  # still waiting: the only slot is busy
    busy.close()
    waiter.join(GUARD)

    assert got == [["b"]]
    assert max(recorder.waits) >= 0.2
    assert max(recorder.in_use) == 1


def test_budget_slot_released_when_connection_invalidated(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    budget = ConnectionBudget(2, timeout=GUARD)
    engine = make_engine(budget, "a")

    with engine.connect() as connection:
        connection.invalidate()

    assert budget.in_use == 0
    assert eventually(lambda: server() == [])


def test_budget_slot_released_when_engine_disposed(
    make_engine: Callable[..., sa.Engine], server: Callable[[], list[str]]
) -> None:
    budget = ConnectionBudget(3, timeout=GUARD)
    engine = make_engine(budget, "a")
    first, second = engine.connect(), engine.connect()
    first.close()
    assert budget.in_use == 2

    engine.dispose()  # closes the idle one; the busy one returns to the orphaned pool
    assert budget.in_use == 1
    second.close()

    other = make_engine(budget, "b", pool_size=3)
    with other.connect(), other.connect(), other.connect():
        # The orphaned pool's idle connection was closed to make room for the third.
        assert server() == ["b", "b", "b"]
    assert type(engine.pool) is budget.pool_class  # recreate() kept the budget


def test_budget_slot_released_when_connection_closed_behind_pool(
    make_engine: Callable[..., sa.Engine],
) -> None:
    budget = ConnectionBudget(1, timeout=GUARD)
    a, b = make_engine(budget, "a"), make_engine(budget, "b")
    connection = a.connect()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None

    dbapi_connection.close()  # the pool does not know

    with b.connect():
        assert budget.reclaimed == 1
    connection.invalidate()
    connection.close()


def test_budget_slot_released_when_connect_fails(
    owner_url: str, make_engine: Callable[..., sa.Engine]
) -> None:
    budget = ConnectionBudget(1, timeout=GUARD)
    wrong = sa.create_engine(
        sa.make_url(psycopg2_url(owner_url)).set(password="wrong"), poolclass=budget.pool_class
    )

    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        wrong.connect()

    assert budget.in_use == 0
    with make_engine(budget, "a").connect():
        assert budget.in_use == 1


def test_budget_rejects_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionBudget(0, timeout=1)
