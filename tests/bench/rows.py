"""The baseline serves the service's rows: copied through the service's API, then checked.

The owner cannot read tenant rows (RLS is forced on it too), so the rows are read the way
a tenant reads them: through the API, with each tenant's own key. The baseline database
gets them with the same ids, names, emails and timestamps, and before anything is
measured the same page of a sample of tenants must come back identical from both apps.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.bench import load
from tests.bench.stack import Tenant

SAMPLE = 20
"""Tenants compared besides the first (the one-tenant scenario's)."""
_PAGE_SIZE = 100  # the API's largest


class NotTheSameRows(RuntimeError):
    """The two apps answer the same request differently: the comparison would be void."""


def read_users(url: str, tenants: Sequence[Tenant]) -> dict[str, list[dict[str, Any]]]:
    """Every user record of every tenant, as the service's ``GET /v1/users`` gives it."""

    def one(tenant: Tenant) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        page, pages = 1, 1
        while page <= pages:
            body = load.get_json(url, tenant, f"/v1/users?page={page}&page_size={_PAGE_SIZE}")
            records += body["records"]
            pages, page = body["total_pages"], page + 1
        return records

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip((t.id for t in tenants), pool.map(one, tenants), strict=True))


def sample(tenants: Sequence[Tenant]) -> list[Tenant]:
    """The first tenant and ``SAMPLE`` others, the same ones at every call."""
    rest = list(tenants[1:])
    return [tenants[0], *random.Random(0).sample(rest, min(SAMPLE, len(rest)))]


def differences(
    service: Mapping[str, Any], baseline: Mapping[str, Any], limit: int = 3
) -> list[str]:
    """What differs between two pages of the same tenant, at most ``limit`` lines."""
    out = []
    for key in sorted(set(service) | set(baseline)):
        if key == "records":
            continue
        if service.get(key) != baseline.get(key):
            out.append(f"{key}: service {service.get(key)!r}, baseline {baseline.get(key)!r}")
    ours, theirs = service.get("records", []), baseline.get("records", [])
    if len(ours) != len(theirs):
        out.append(f"records: service {len(ours)}, baseline {len(theirs)}")
    for number, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
        if mine != other:
            out.append(f"record {number}: service {mine!r}, baseline {other!r}")
    return out[:limit]


def check_same_rows(
    service_url: str, baseline_url: str, tenants: Sequence[Tenant], path: str
) -> int:
    """Raise NotTheSameRows unless both apps answer ``path`` alike for every tenant; how many."""
    for tenant in tenants:
        found = differences(
            load.get_json(service_url, tenant, path), load.get_json(baseline_url, tenant, path)
        )
        if found:
            raise NotTheSameRows(
                f"the service and the baseline answer {path} differently for tenant "
                f"{tenant.id}, so their throughput would not compare the same work: "
                + "; ".join(found)
                + " (see tests/bench/baseline_app.py and run.setup_baseline)"
            )
    return len(tenants)
