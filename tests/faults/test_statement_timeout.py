"""A statement that reaches the role's statement_timeout: 503, and its connection lives on."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import SeededTenant
from tests.faults.conftest import (
    IO_TIMEOUT,
    REQUEST_TIMEOUT,
    STATEMENT_TIMEOUT_MS,
    StartService,
    backends_of,
)
from tests.faults.ledger import Ledger, request

pytestmark = pytest.mark.e2e


def test_statement_timeout_is_503_and_the_connection_is_reused(
    start_fault_service: StartService,
    fault_tenants: list[SeededTenant],
    owner_url: str,
    owner_engine: sa.Engine,
    superuser_engine: sa.Engine,
) -> None:
    # One worker, so every request of the tenant shares one engine and its pool.
    service = start_fault_service(owner_url, workers=1, threads=2)
    tenant = fault_tenants[0]
    users = service.url + "/v1/users"
    ledger = Ledger()
    assert ledger.write(service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT)[0].ok
    before = {row.pid for row in backends_of(superuser_engine, tenant.id)}
    assert len(before) == 1
    with owner_engine.begin() as connection:
        # Every statement on users now waits for the lock until its statement_timeout.
        connection.execute(sa.text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
        outcome, response = request("GET", users, headers=tenant.headers, timeout=REQUEST_TIMEOUT)
        write, _ = ledger.write(service.url, tenant, "/v1/users", timeout=REQUEST_TIMEOUT)
    for failed in (outcome, write):
        assert failed.status == 503
        assert STATEMENT_TIMEOUT_MS / 1000 <= failed.elapsed < IO_TIMEOUT
    problem = response.json()
    assert problem["code"] == "statement_timeout"
    assert response.headers["Retry-After"] == "1"
    assert request("GET", users, headers=tenant.headers, timeout=REQUEST_TIMEOUT)[0].ok
    assert {row.pid for row in backends_of(superuser_engine, tenant.id)} == before
    ledger.verify(service.url, fault_tenants)
