"""A gunicorn worker SIGKILLed in the middle of a write."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import SeededTenant
from tests.faults.conftest import REQUEST_TIMEOUT, StartService, backends_of
from tests.faults.ledger import Ledger, MixedLoad
from tests.support import child_pids

pytestmark = pytest.mark.e2e


def _served_by(log_path: Path, pid: int) -> bool:
    """Whether the service log shows a request answered by worker ``pid``."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "request" and entry.get("pid") == pid:
                return True
    return False


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout:g} s"
        time.sleep(0.05)


def test_worker_killed_mid_write_loses_nothing_and_is_replaced(
    start_fault_service: StartService,
    fault_tenants: list[SeededTenant],
    owner_url: str,
    owner_engine: sa.Engine,
    superuser_engine: sa.Engine,
) -> None:
    service = start_fault_service(owner_url, workers=2, threads=4)
    # The service answers once one worker is up; the other may still be booting.
    _wait(lambda: len(child_pids(service.pid)) == 2, 30, "two workers")
    workers = child_pids(service.pid)
    tenant = fault_tenants[0]
    ledger = Ledger()
    # The load writes products; the write to kill is a user, held on a lock of users.
    with MixedLoad(
        service.url,
        fault_tenants,
        ledger,
        threads=3,
        timeout=REQUEST_TIMEOUT,
        paths=("/v1/products",),
    ) as load:
        load.wait_until(lambda done: sum(o.ok for o in done) >= 10, 30, "10 successes")
        with owner_engine.begin() as connection, ThreadPoolExecutor(max_workers=1) as pool:
            connection.execute(sa.text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
            pending = pool.submit(
                ledger.write, service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT
            )
            waiting: list[int] = []

            def insert_waits() -> bool:
                rows = backends_of(superuser_engine, tenant.id)
                waiting[:] = [
                    int(row.application_name.rsplit(":", 1)[1])
                    for row in rows
                    if row.wait_event_type == "Lock"
                ]
                return bool(waiting) and not pending.done()

            _wait(insert_waits, 20, "the user insert waiting on the lock")
            victim = waiting[0]
            assert victim in workers
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            killed, lost = pending.result()
        # The lock is released: the insert finishes on the server, but no COMMIT follows.
        assert killed.status is None, killed  # the client saw its connection die
        _wait(lambda: len(child_pids(service.pid) - {victim}) == 2, 30, "a replacement worker")
        (replacement,) = child_pids(service.pid) - workers
        _wait(lambda: _served_by(service.log_path, replacement), 30, "the replacement serving")
        load.wait_until(
            lambda done: sum(o.ok and o.started > killed_at + 1 for o in done) >= 10,
            30,
            "10 successes after the kill",
        )
    outcomes = load.outcomes
    for outcome in outcomes:
        if not outcome.ok:  # only what was in flight on the killed worker may fail
            assert outcome.started <= killed_at <= outcome.started + outcome.elapsed, outcome
    assert any(o.ok and o.started > killed_at for o in outcomes), "the other worker served"
    assert ledger.copies(service.url, tenant, lost) == 0, "the killed write was half done"
    ledger.verify(service.url, fault_tenants)
