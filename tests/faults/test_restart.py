"""PostgreSQL restarted under mixed load: 503s meanwhile, then service again, no restart of ours."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from tests.conftest import ClusterFactory
from tests.e2e.conftest import seed
from tests.faults.conftest import (
    FAULT_SETTINGS,
    REQUEST_TIMEOUT,
    StartService,
    through,
)
from tests.faults.ledger import Ledger, MixedLoad, Outcome, assert_answered
from tests.faults.proxy import FaultProxy
from tests.support import flask_or_fail

pytestmark = pytest.mark.e2e

RECOVERY = 10.0  # seconds from the server being back to requests succeeding again


@pytest.mark.parametrize("way", ["dedicated", "shared"])
@pytest.mark.parametrize("restarts", [1, pytest.param(5, marks=pytest.mark.soak)])
def test_restart_fast_under_load_recovers_within_10s(
    cluster_factory: ClusterFactory,
    start_fault_service: StartService,
    tmp_path: Path,
    app_env: dict[str, str],
    restarts: int,
    way: str,
) -> None:
    cluster = cluster_factory(max_connections=60)
    owner_url = cluster.bootstrap_owner("tenantpool", secrets.token_urlsafe(24), "tenantpool")
    env = {**app_env, **FAULT_SETTINGS, "APP_DATABASE_URL": owner_url}
    flask_or_fail(env, "db", "upgrade")
    tenants = seed(env, tmp_path / "tenants.json", count=2, prefix="restart")
    # The service reaches the server through a proxy, so the server may come back on
    # another port (if its own was taken meanwhile) without the service knowing.
    with FaultProxy(cluster.port) as proxy:
        service = start_fault_service(through(owner_url, proxy), APP_SERVING=way)
        ledger = Ledger()
        with MixedLoad(service.url, tenants, ledger, timeout=REQUEST_TIMEOUT) as load:
            load.wait_until(lambda done: sum(o.ok for o in done) >= 20, 30, "20 successes")
            for _ in range(restarts):
                port = cluster.port
                cluster.stop(mode="fast")
                down = time.monotonic()
                load.wait_until(
                    lambda done, at=down: any(o.status == 503 and o.started > at for o in done),
                    15,
                    "a 503 while PostgreSQL is down",
                )
                cluster.start(port=port, max_connections=60)
                proxy.retarget(cluster.port)
                back = time.monotonic()
                for tenant in tenants:
                    load.wait_until(
                        lambda done, tid=tenant.id, at=back: _first_success(done, tid, at) > 0,
                        RECOVERY + 5,
                        f"a success of tenant {tenant.id} after the restart",
                    )
                    assert _first_success(load.snapshot(), tenant.id, back) - back <= RECOVERY
            settled = time.monotonic()
            load.wait_until(
                lambda done: sum(o.ok and o.started > settled for o in done) >= 20,
                30,
                "20 successes after recovery",
            )
        ledger.verify(service.url, tenants)
    outcomes = load.outcomes
    assert_answered(outcomes, REQUEST_TIMEOUT)
    after = [o for o in outcomes if o.started > settled]
    assert all(o.ok for o in after), [o for o in after if not o.ok][:3]
    assert any(o.status == 503 for o in outcomes), "the restart should have failed some requests"


def _first_success(outcomes: list[Outcome], tenant_id: str, moment: float) -> float:
    """When the tenant's first request started after ``moment`` succeeded; 0 if none did."""
    ends = [
        o.started + o.elapsed
        for o in outcomes
        if o.ok and o.tenant_id == tenant_id and o.started >= moment
    ]
    return min(ends, default=0.0)
