"""The service with tenants on two PostgreSQL servers, and a tenant moved under write load.

Tenant A lives on ``default`` (the control plane's server), B on ``c2`` (another server);
the endpoint and isolation tests of test_service.py run again with this module's
``service`` and ``seeded``. Tenant M is moved from ``default`` to ``c2`` by the real
``flask tenants move`` while clients keep writing to it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import SeededTenant, Service, seed, start_service, stop_service
from tests.e2e.test_service import (  # noqa: F401  (collected again, across two clusters)
    test_service_every_endpoint_for_both_tenants,
    test_service_tenant_never_reaches_another_tenants_rows,
)
from tests.faults.ledger import Ledger, MixedLoad, assert_answered
from tests.support import Inspector, run_flask

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def tenants(
    two_clusters_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SeededTenant]:
    """A and M on ``default``, B on ``c2``, each with 3 users, by the real seed command."""
    out = tmp_path_factory.mktemp("seed-clusters")
    a, m = seed(two_clusters_env, out / "default.json", count=2, prefix="cl-default")
    (b,) = seed(two_clusters_env, out / "c2.json", count=1, prefix="cl-c2", cluster="c2")
    return {"a": a, "b": b, "m": m}


@pytest.fixture(scope="module")
def seeded(tenants: dict[str, SeededTenant]) -> list[SeededTenant]:
    return [tenants["a"], tenants["b"]]


@pytest.fixture(scope="module")
def service(
    two_clusters_env: dict[str, str],
    tenants: dict[str, SeededTenant],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    log_path = tmp_path_factory.mktemp("gunicorn-clusters") / "gunicorn.log"
    process, running = start_service(two_clusters_env, log_path, workers=2, threads=4)
    yield running
    stop_service(process)


def _user_counts(inspect: Inspector, cluster: str, tenant: SeededTenant) -> Counter[str]:
    """Rows per user id of ``tenant`` on one cluster, as the superuser sees them."""
    query = "SELECT id::text, count(*) FROM users WHERE tenant_id = %s GROUP BY id"
    return Counter(dict(inspect.rows(cluster, query, tenant.id)))


def _acknowledged_writes(load: MixedLoad) -> int:
    return sum(1 for outcome in load.snapshot() if outcome.method == "POST" and outcome.ok)


def test_clusters_move_under_write_load_loses_no_acknowledged_write(
    service: Service,
    tenants: dict[str, SeededTenant],
    two_clusters_env: dict[str, str],
    inspect: Inspector,
) -> None:
    mover = tenants["m"]
    seeded_rows = sum(_user_counts(inspect, "default", mover).values())
    ledger = Ledger()
    with MixedLoad(
        service.url, [mover], ledger, threads=2, timeout=REQUEST_TIMEOUT, paths=("/v1/users",)
    ) as load:
        load.wait_until(lambda _: _acknowledged_writes(load) >= 10, 60, "10 writes")
        move = ["tenants", "move", mover.id, "--to", "c2", "--batch-size", "5"]
        moved = run_flask(two_clusters_env, *move, timeout=120)
        assert moved.returncode == 0, moved.stderr
        # Writes go on, to the new cluster, once every worker has dropped the old engine.
        after_move = _acknowledged_writes(load) + 10
        load.wait_until(lambda _: _acknowledged_writes(load) >= after_move, 60, "writes after")
    # Nothing but successes and 503s with Retry-After while the tenant was frozen.
    assert_answered(load.outcomes, REQUEST_TIMEOUT)
    assert re.search(r"copying users: \d+/\d+ \(100%\) done", moved.stderr)  # progress shown
    # Every acknowledged write exactly once, read back through the API as the tenant...
    ledger.verify(service.url, [mover, tenants["a"], tenants["b"]])
    # ... and on the new cluster, none left on the old one.
    acknowledged = ledger.acknowledged(mover.id, "/v1/users")
    on_target = _user_counts(inspect, "c2", mover)
    assert all(on_target[user_id] == 1 for user_id in acknowledged)
    assert sum(on_target.values()) >= seeded_rows + len(acknowledged)
    assert _user_counts(inspect, "default", mover) == Counter()
