"""Network faults between the service and PostgreSQL, made by the fault proxy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import SeededTenant, Service
from tests.faults.conftest import (
    CONNECT_TIMEOUT,
    IO_TIMEOUT,
    REQUEST_TIMEOUT,
    StartService,
    through,
)
from tests.faults.ledger import RESOURCES, Ledger, Outcome, assert_answered, request
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.e2e

# A black-holed request waits for one round trip and one reconnect, then fails; a loaded
# machine may add a few seconds.
BLACKHOLE_BOUND = IO_TIMEOUT + CONNECT_TIMEOUT + 4


def _write_everything(service: Service, tenants: list[SeededTenant], ledger: Ledger) -> None:
    for tenant in tenants:
        for path in RESOURCES:
            outcome, _ = ledger.write(service.url, tenant, path, timeout=REQUEST_TIMEOUT)
            assert outcome.ok, outcome


def _wait_for(url: str, headers: dict[str, str], timeout: float) -> float:
    """Seconds until ``url`` answers 200; fails after ``timeout``."""
    started = time.monotonic()
    while True:
        outcome, _ = request("GET", url, headers=headers, timeout=REQUEST_TIMEOUT)
        if outcome.ok:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{url} still failing: {outcome}"
        time.sleep(0.2)


def test_blackhole_fails_requests_within_timeouts_then_recovers(
    proxy: FaultProxy,
    start_fault_service: StartService,
    fault_tenants: list[SeededTenant],
    owner_url: str,
) -> None:
    # Threads enough that no request queues behind another inside a worker.
    service = start_fault_service(through(owner_url, proxy), threads=8)
    ledger = Ledger()
    _write_everything(service, fault_tenants, ledger)
    proxy.blackhole()
    with ThreadPoolExecutor(max_workers=8) as pool:
        writes = [
            pool.submit(ledger.write, service.url, tenant, path, timeout=REQUEST_TIMEOUT)
            for tenant in fault_tenants
            for path in RESOURCES
        ]
        users = service.url + "/v1/users"
        reads = [
            pool.submit(request, "GET", users, headers=t.headers, timeout=REQUEST_TIMEOUT)
            for t in fault_tenants
        ]
        ready = pool.submit(request, "GET", service.url + "/readyz", timeout=REQUEST_TIMEOUT)
        outcomes: list[Outcome] = [f.result()[0] for f in [*writes, *reads, ready]]
    assert_answered(outcomes, BLACKHOLE_BOUND)
    assert [o.status for o in outcomes] == [503] * len(outcomes)
    proxy.heal()
    _wait_for(service.url + "/readyz", {}, 15)
    for tenant in fault_tenants:
        _wait_for(service.url + "/v1/users", tenant.headers, 15)
    _write_everything(service, fault_tenants, ledger)
    ledger.verify(service.url, fault_tenants)


@pytest.mark.parametrize(
    ("statement", "committed"),
    [(b"INSERT INTO users", False), (b"COMMIT", True)],
    ids=["insert", "commit"],
)
def test_reset_mid_query_fails_that_request_and_never_writes_twice(
    proxy: FaultProxy,
    start_fault_service: StartService,
    fault_tenants: list[SeededTenant],
    owner_url: str,
    statement: bytes,
    committed: bool,
) -> None:
    """The server runs the statement, its answer is lost: 503, and no retry behind our back."""
    service = start_fault_service(through(owner_url, proxy), workers=1, threads=2)
    tenant = fault_tenants[0]
    ledger = Ledger()
    assert ledger.write(service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT)[0].ok
    proxy.reset_on_reply(statement)
    failed, lost = ledger.write(service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT)
    assert failed.status == 503
    assert failed.content_type == "application/problem+json"
    assert ledger.write(service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT)[0].ok
    # Rolled back if the connection died before COMMIT; committed once if during it.
    assert ledger.copies(service.url, tenant, lost) == (1 if committed else 0)
    ledger.verify(service.url, fault_tenants)


def test_latency_below_the_bounds_slows_requests_but_they_succeed(
    proxy: FaultProxy,
    start_fault_service: StartService,
    fault_tenants: list[SeededTenant],
    owner_url: str,
) -> None:
    service = start_fault_service(through(owner_url, proxy), workers=1, threads=2)
    ledger = Ledger()
    _write_everything(service, fault_tenants, ledger)
    proxy.latency(0.05)
    started = time.monotonic()
    _write_everything(service, fault_tenants, ledger)
    # Each write makes several round trips, each now 0.1 s longer.
    assert time.monotonic() - started > 4 * 0.1
    proxy.heal()
    ledger.verify(service.url, fault_tenants)
