"""Registry hot and cold paths on the suite's cluster (pytest-benchmark).

Plain ``pytest`` runs each once (``--benchmark-disable``) so they keep working; ``make
bench-registry`` runs them with timing (``pytest tests/bench/test_registry_bench.py
--benchmark-enable --benchmark-only``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant


def test_bench_registry_get_cached_tenant(
    benchmark: Any, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    """The hot path: the engine is there; one lock, a dict read, a timestamp."""
    tenancy.registry.get(tenant_a.id)

    entry = benchmark(tenancy.registry.get, tenant_a.id)

    assert entry.tenant_id == tenant_a.id


def test_bench_open_session_cached_tenant(
    benchmark: Any, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    """What a request pays before its first query: registry, checkout (liveness check), close."""
    tenancy.open_session(tenant_a.id).close()

    def open_and_close() -> None:
        tenancy.open_session(tenant_a.id).close()

    benchmark(open_and_close)


def test_bench_registry_get_cold_tenant(
    benchmark: Any, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    """The cold path: credentials read and decrypted, a new engine, its first login."""

    def evict() -> tuple[tuple[Any, ...], dict[str, Any]]:
        tenancy.registry.evict(tenant_a.id, "bench")
        return (tenant_a.id,), {}

    entry = benchmark.pedantic(tenancy.registry.get, setup=evict, rounds=50, warmup_rounds=2)

    with entry.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
