"""The busiest tenants as a bounded metric: per-worker files merged at scrape time."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from app.tenancy.serving.activity import DEDICATED, TenantActivity
from app.top_tenants import TopTenantsCollector, merge_top, top_file, write_top


def _worker_file(directory: Path, pid: int, requests: dict[str, float]) -> Path:
    path = top_file(directory, pid)
    path.write_text(
        json.dumps({"requests": [[t, r] for t, r in requests.items()], "pool_wait": []})
    )
    return path


def test_top_tenants_written_by_a_worker_are_read_back(tmp_path: Path) -> None:
    activity = TenantActivity()
    tenant = uuid.uuid4()
    activity.started(tenant)
    activity.session_opened(tenant, DEDICATED, 0.25)
    activity.finished(tenant, 200, DEDICATED)

    write_top(tmp_path, activity)
    requests, waits = merge_top(tmp_path)

    assert list(requests) == [str(tenant)]
    assert list(waits) == [str(tenant)]
    assert top_file(tmp_path, os.getpid()).exists()


def test_top_tenants_sum_over_workers_and_keep_only_the_highest(tmp_path: Path) -> None:
    _worker_file(tmp_path, 1, {"a": 5.0, "b": 1.0, "c": 0.5})
    _worker_file(tmp_path, 2, {"b": 4.5, "d": 2.0})

    requests, _ = merge_top(tmp_path, count=2)

    assert requests == {"b": 5.5, "a": 5.0}


def test_top_tenants_ignore_a_stale_file(tmp_path: Path) -> None:
    stale = _worker_file(tmp_path, 3, {"gone": 100.0})
    old = time.time() - 3600
    os.utime(stale, (old, old))

    assert merge_top(tmp_path) == ({}, {})


@pytest.mark.parametrize("tenants", [0, 3, 50])
def test_top_tenants_collector_exports_at_most_the_top_count(tmp_path: Path, tenants: int) -> None:
    _worker_file(tmp_path, 4, {str(uuid.uuid4()): float(i + 1) for i in range(tenants)})

    families = list(TopTenantsCollector(tmp_path, count=10).collect())

    names = {family.name for family in families}
    assert names == {
        "tenantpool_top_tenant_requests_per_second",
        "tenantpool_top_tenant_pool_wait_seconds_per_second",
    }
    assert len(families[0].samples) == min(tenants, 10)
    assert all(set(sample.labels) == {"tenant"} for sample in families[0].samples)
