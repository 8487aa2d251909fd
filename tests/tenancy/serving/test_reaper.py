"""Reaper: ticks driven directly with a fake clock; the thread started, stopped, forked."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import orm

from app.tenancy.serving import reaper as reaper_module
from app.tenancy.serving.reaper import THREAD_NAME, Reaper, process_reaper, shutdown_process
from app.tenancy.serving.registry import EngineRegistry
from tests.support import FakeClock, lazy_engine, run_in_child

TTL = 60.0
GUARD = 5.0  # seconds before a blocked wait fails its test instead of hanging the suite


def make_registry(clock: FakeClock) -> EngineRegistry:
    return EngineRegistry(
        lazy_engine,
        session_factory=lambda engine: orm.sessionmaker(bind=engine),
        max_engines=10,
        idle_ttl=TTL,
        clock=clock,
    )


class BrokenRegistry(EngineRegistry):
    """A registry whose reaping fails, as a bug or a dispose error would."""

    def reap_idle(self, now: float | None = None) -> list[uuid.UUID]:
        raise RuntimeError("reaping failed")


def reaper_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME]


def new_reaper_threads(before: list[threading.Thread]) -> list[threading.Thread]:
    """Reaper threads started since ``before`` (the app under test may run its own)."""
    return [thread for thread in reaper_threads() if thread not in before]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reaper(clock: FakeClock) -> Iterator[Reaper]:
    """A reaper whose thread, if a test starts it, would not tick on its own."""
    made = Reaper(interval=60.0, clock=clock)
    yield made
    made.stop()


@pytest.fixture
def fresh_process_reaper(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests of the process-wide reaper get their own, stopped at the end."""
    monkeypatch.setattr(reaper_module, "_process_reaper", None)
    yield
    if reaper_module._process_reaper is not None:
        reaper_module._process_reaper.stop()


def test_reaper_run_once_reaps_every_watched_registry(reaper: Reaper, clock: FakeClock) -> None:
    registries = [make_registry(clock), make_registry(clock)]
    tenants = [registry.get(uuid.uuid4()).tenant_id for registry in registries]
    for registry in registries:
        reaper.watch(registry)
    clock.advance(TTL + 1)

    reaper.run_once()

    for registry, tenant in zip(registries, tenants, strict=True):
        assert tenant not in registry
    assert reaper.ticks == 1
    assert reaper.last_tick == clock.now


def test_reaper_run_once_passes_now_to_registries(reaper: Reaper, clock: FakeClock) -> None:
    registry = make_registry(clock)
    tenant = registry.get(uuid.uuid4()).tenant_id
    reaper.watch(registry)

    reaper.run_once(now=clock.now + TTL + 1)

    assert tenant not in registry


def test_reaper_run_once_survives_failing_registry(
    reaper: Reaper, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = BrokenRegistry(
        lazy_engine,
        session_factory=lambda engine: orm.sessionmaker(bind=engine),
        max_engines=1,
        idle_ttl=TTL,
    )
    healthy = make_registry(clock)
    tenant = healthy.get(uuid.uuid4()).tenant_id
    reaper.watch(broken)
    reaper.watch(healthy)
    clock.advance(TTL + 1)

    with caplog.at_level(logging.ERROR, logger="app.tenancy.serving.reaper"):
        reaper.run_once()

    assert tenant not in healthy
    assert reaper.failures == 1
    assert "reaping idle tenant engines failed" in caplog.text


def test_reaper_run_once_runs_tasks_after_failing_task(reaper: Reaper) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("LISTEN connection lost")

    reaper.add_task(broken)
    reaper.add_task(lambda: ran.append("second"))

    reaper.run_once()

    assert ran == ["second"]
    assert reaper.failures == 1


def test_reaper_watch_is_idempotent(reaper: Reaper, clock: FakeClock) -> None:
    registry = make_registry(clock)

    reaper.watch(registry)
    reaper.watch(registry)

    assert reaper.watched() == [registry]


def test_reaper_watch_does_not_keep_registry_alive(reaper: Reaper, clock: FakeClock) -> None:
    reaper.watch(make_registry(clock))
    gc.collect()

    assert reaper.watched() == []


def test_reaper_thread_ticks_every_interval() -> None:
    ticked = threading.Event()
    names: list[str] = []

    def task() -> None:
        names.append(threading.current_thread().name)
        ticked.set()

    reaper = Reaper(interval=0.01, tasks=[task])
    reaper.start()
    try:
        assert ticked.wait(GUARD)
    finally:
        reaper.stop()

    assert names[0] == THREAD_NAME


def test_reaper_start_runs_named_daemon_thread(reaper: Reaper) -> None:
    before = reaper_threads()
    reaper.start()

    assert reaper.running
    [thread] = new_reaper_threads(before)
    assert thread.daemon


def test_reaper_start_is_idempotent(reaper: Reaper) -> None:
    before = reaper_threads()
    reaper.start()
    reaper.start()

    assert len(new_reaper_threads(before)) == 1


def test_reaper_stop_wakes_and_joins_thread(reaper: Reaper) -> None:
    before = reaper_threads()
    reaper.start()
    started = time.monotonic()

    reaper.stop()

    assert time.monotonic() - started < 1.0  # woken, not left to sleep its 60 s interval
    assert not reaper.running
    assert new_reaper_threads(before) == []


def test_reaper_start_after_stop_starts_again(reaper: Reaper) -> None:
    reaper.start()
    reaper.stop()

    reaper.start()

    assert reaper.running


def test_reaper_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        Reaper(interval=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_reaper_start_in_forked_child_starts_own_thread(reaper: Reaper) -> None:
    reaper.start()

    def child() -> bool:
        inherited = reaper.running  # the parent's thread does not exist here
        reaper.start()
        started = reaper.running and len(reaper_threads()) == 1
        reaper.stop()
        return not inherited and started

    assert run_in_child(child) == 0
    assert reaper.running


@pytest.mark.usefixtures("fresh_process_reaper")
def test_process_reaper_is_one_per_process() -> None:
    assert process_reaper() is process_reaper()


@pytest.mark.usefixtures("fresh_process_reaper")
def test_process_reaper_configure_sets_interval() -> None:
    reaper_module.configure(0.5)

    assert process_reaper().interval == 0.5


@pytest.mark.usefixtures("fresh_process_reaper")
def test_shutdown_process_stops_reaper_and_disposes_engines(clock: FakeClock) -> None:
    registry = make_registry(clock)
    registry.get(uuid.uuid4())
    reaper = process_reaper()
    reaper.watch(registry)
    reaper.start()

    shutdown_process()

    assert not reaper.running
    assert len(registry) == 0
    assert registry.evicted_by_reason == {"shutdown": 1}


@pytest.mark.usefixtures("fresh_process_reaper")
def test_shutdown_process_without_reaper_does_nothing() -> None:
    shutdown_process()

    assert reaper_module._process_reaper is None


class FakeListener:
    """A disconnected listener: pumped whenever its retry time comes."""

    def __init__(self, *, retry_in: float = 0.01, broken: bool = False) -> None:
        self._retry_in = retry_in
        self.broken = broken
        self.pumps = 0

    def fileno(self) -> int | None:
        return None

    def retry_in(self) -> float | None:
        return self._retry_in

    def pump(self) -> int:
        self.pumps += 1
        if self.broken:
            raise RuntimeError("listener bug")
        return 0


def test_reaper_pumps_disconnected_listener_when_its_retry_is_due(reaper: Reaper) -> None:
    listener = FakeListener(retry_in=0.01)
    reaper.listen(listener)

    reaper.start()  # interval 60 s: only the listener's retry time wakes the thread

    deadline = time.monotonic() + GUARD
    while listener.pumps < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.pumps >= 5


def test_reaper_thread_survives_failing_listener() -> None:
    ticked = threading.Event()
    listener = FakeListener(broken=True)
    reaper = Reaper(interval=0.05, tasks=[ticked.set])
    reaper.listen(listener)
    reaper.start()
    try:
        assert ticked.wait(GUARD)
        assert reaper.running
    finally:
        reaper.stop()

    assert reaper.failures >= 1


def test_reaper_stop_wakes_thread_waiting_on_listener(reaper: Reaper) -> None:
    reaper.listen(FakeListener(retry_in=60.0))
    reaper.start()
    started = time.monotonic()

    reaper.stop()

    assert time.monotonic() - started < 1.0
    assert not reaper.running


def test_reaper_listen_does_not_keep_listener_alive(reaper: Reaper) -> None:
    reaper.listen(FakeListener())
    gc.collect()

    assert reaper.listeners() == []
