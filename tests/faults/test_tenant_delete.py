"""A tenant deleted while its requests are in flight: they end cleanly, nobody else notices."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import DEFAULT_DELETE_GRACE, delete_tenant
from tests.faults.conftest import REQUEST_TIMEOUT, StartService, backends_of, new_tenant
from tests.faults.ledger import Ledger, MixedLoad, Outcome, request
from tests.support import tenant_tables

pytestmark = pytest.mark.e2e

# Answers that end a doomed tenant's request cleanly: done before, suspended, gone, cut off.
CLEAN = {200, 201, 401, 403, 503}


def test_tenant_deleted_in_flight_ends_cleanly_and_others_lose_nothing(
    start_fault_service: StartService,
    tenancy: Tenancy,
    owner_url: str,
    owner_engine: sa.Engine,
    superuser_engine: sa.Engine,
) -> None:
    # The doomed tenant's statements may run 10 s, so its blocked write is still running
    # when the deletion ends its sessions (after DEFAULT_DELETE_GRACE).
    doomed = new_tenant(tenancy, statement_timeout_ms=10_000)
    survivor = new_tenant(tenancy)
    service = start_fault_service(owner_url, APP_DATABASE_IO_TIMEOUT="15")
    ledger = Ledger()
    first, product = ledger.write(service.url, doomed, "/v1/products", timeout=REQUEST_TIMEOUT)
    assert first.ok
    # Users for the load; products held by a lock, so the doomed tenant's PATCH waits.
    with (
        MixedLoad(
            service.url, [doomed, survivor], ledger, timeout=REQUEST_TIMEOUT, paths=("/v1/users",)
        ) as load,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        load.wait_until(lambda done: sum(o.ok for o in done) >= 10, 30, "10 successes")
        with owner_engine.begin() as connection:
            connection.execute(sa.text("LOCK TABLE products IN ACCESS EXCLUSIVE MODE"))
            blocked = pool.submit(
                request,
                "PATCH",
                f"{service.url}/v1/products/{product.record_id}",
                json={"stock": 2},
                headers=doomed.headers,
                timeout=REQUEST_TIMEOUT,
            )
            deadline = time.monotonic() + 20
            while not any(
                b.wait_event_type == "Lock" for b in backends_of(superuser_engine, doomed.id)
            ):
                assert time.monotonic() < deadline, "the PATCH never waited on the lock"
                time.sleep(0.05)
            deleted_at = time.monotonic()
            deletion = pool.submit(
                delete_tenant, tenancy.clusters, uuid.UUID(doomed.id), actor="fault-test"
            )
            ended, _ = blocked.result()
            # Released now: the deletion's own cascade to products waits for this lock.
        deletion.result()
        load.wait_until(
            lambda done: (
                _refused(done, doomed.id, deleted_at) >= 5
                and _served(done, survivor.id, deleted_at) >= 10
            ),
            30,
            "the doomed tenant refused and the survivor served",
        )
    # The deletion ended the blocked write's session after its grace: a clean 503.
    assert ended.status == 503, ended
    assert ended.content_type == "application/problem+json"
    assert ended.started + ended.elapsed - deleted_at < DEFAULT_DELETE_GRACE + REQUEST_TIMEOUT
    for outcome in load.outcomes:
        assert outcome.elapsed < REQUEST_TIMEOUT, outcome
        if outcome.tenant_id == survivor.id:
            assert outcome.ok, outcome  # the survivor never noticed
        else:
            assert outcome.status in CLEAN, outcome
    ledger.verify(service.url, [survivor])
    # Nothing of the doomed tenant is left (counted, never read).
    with superuser_engine.connect() as connection:
        for table in tenant_tables():
            count = connection.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE tenant_id = :id"), {"id": doomed.id}
            ).scalar_one()
            assert count == 0, table


def _refused(outcomes: list[Outcome], tenant_id: str, deleted_at: float) -> int:
    """The tenant's 401s from requests sent once its deletion had reached every worker."""
    return sum(
        o.tenant_id == tenant_id and o.status == 401 and o.started > deleted_at + 2
        for o in outcomes
    )


def _served(outcomes: list[Outcome], tenant_id: str, since: float) -> int:
    return sum(o.tenant_id == tenant_id and o.ok and o.started > since for o in outcomes)
