"""Failover through a real gunicorn under load (issue 20, "Done when" 1 and 2).

One DSN lists three servers, ``host=A&host=B&host=C`` (target_session_attrs=read-write
added by the service): A the primary, B its synchronous standby (``pg_basebackup``,
``ANY 1``), C not there yet. Migrations and ``seed-tenants`` run through that DSN.

1. Under mixed write and read load, A is stopped ``-m immediate`` and B promoted
   (``pg_ctl promote``): writes succeed again within 5 s of the promotion, every answer is
   2xx or 503 with Retry-After, every acknowledged write is on B exactly once, and a tenant
   suspended right after is refused by every worker within 5 s.
2. C is made a standby of B, then promoted while B stays up; B is then made read-only in
   place (``default_transaction_read_only``): writes succeed again within 5 s of that,
   never a 500, and what is acknowledged from then on is on C.

The figures (seconds to the first successful write, 503s, anything else) are printed:
``python -m pytest -m soak tests/faults/test_failover.py -s`` runs the longer variants.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from app.dev.standby import demote_in_place, make_standby, promote, require_synchronous
from tests.conftest import ClusterFactory
from tests.e2e.conftest import SeededTenant, Service, seed
from tests.faults.conftest import FAULT_SETTINGS, REQUEST_TIMEOUT, StartService
from tests.faults.ledger import (
    RESOURCES,
    Ledger,
    MixedLoad,
    Outcome,
    Write,
    assert_answered,
    request,
)
from tests.standbys import multi_host
from tests.support import flask_or_fail

pytestmark = pytest.mark.e2e

RECOVERY = 5.0  # seconds from the promotion (or the demotion) to writes succeeding again
REFUSED_WITHIN = 5.0  # seconds for every worker to refuse a tenant suspended after it
MAX_CONNECTIONS = 60


@dataclass(frozen=True)
class Figures:
    """What clients saw around one failover."""

    recovery: float  # seconds from the promotion or demotion to the first write acknowledged
    answers: int
    unavailable: int  # 503s (all with Retry-After)
    other: int  # anything but 2xx and 503: must be 0

    def line(self, what: str) -> str:
        return (
            f"{what}: first write acknowledged {self.recovery:.2f} s after; "
            f"{self.answers} answers, {self.unavailable} x 503 with Retry-After, "
            f"{self.other} other"
        )


@dataclass
class Chain:
    primary: LocalCluster
    standby_port: int
    spare_port: int
    env: dict[str, str]
    tenants: list[SeededTenant]
    standbys: list[LocalCluster] = field(default_factory=list)

    def standby(self, of: LocalCluster, port: int, name: str) -> LocalCluster:
        """A standby of ``of`` beside it (stopped at the end of the test)."""
        made = make_standby(
            of, of.datadir.parent / name, name=name, port=port, max_connections=MAX_CONNECTIONS
        )
        self.standbys.append(made)
        return made


@pytest.fixture
def chain(
    cluster_factory: ClusterFactory, app_env: dict[str, str], tmp_path: Path
) -> Iterator[Chain]:
    # -c synchronous_commit=off (the suite's speed-up) would let a commit skip the standby.
    primary = cluster_factory(
        max_connections=MAX_CONNECTIONS, extra_settings={"synchronous_commit": "on"}
    )
    owner = primary.bootstrap_owner("failover", secrets.token_urlsafe(24), "tenantpool")
    standby_port, spare_port = free_port(), free_port()
    env = {
        **app_env,
        **FAULT_SETTINGS,
        "APP_DATABASE_URL": multi_host(owner, primary.port, standby_port, spare_port),
    }
    flask_or_fail(env, "db", "upgrade")
    tenants = seed(env, tmp_path / "tenants.json", count=3, prefix="failover")
    made = Chain(primary, standby_port, spare_port, env, tenants)
    yield made
    for standby in made.standbys:  # the primary's directory (and theirs) goes with it
        standby.stop(mode="immediate")


def _figures(outcomes: list[Outcome], since: float) -> Figures:
    writes = [o for o in outcomes if o.method == "POST" and o.ok and o.started >= since]
    first = min(o.started + o.elapsed for o in writes) - since
    return Figures(
        recovery=first,
        answers=len(outcomes),
        unavailable=sum(o.status == 503 for o in outcomes),
        other=sum(not o.ok and o.status != 503 for o in outcomes),
    )


def _check_answers(outcomes: list[Outcome]) -> None:
    """Every answer a 2xx or a 503 problem with Retry-After; never a 500, never none."""
    assert_answered(outcomes, REQUEST_TIMEOUT)
    for outcome in outcomes:
        assert outcome.ok or outcome.retry_after == "1", outcome


def _writes_after(since: float) -> Callable[[list[Outcome]], bool]:
    return lambda done: sum(o.method == "POST" and o.ok and o.started >= since for o in done) >= 10


def _admin(service: Service, path: str) -> requests.Response:
    """An admin call, retried while it meets a server that went away (503)."""
    headers = {"Authorization": f"Bearer {service.env['APP_ADMIN_TOKEN']}"}
    deadline = time.monotonic() + 10
    while True:
        response = requests.post(service.url + path, headers=headers, timeout=REQUEST_TIMEOUT)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.headers["Retry-After"] == "1"
        time.sleep(0.1)


def _refused_by_every_worker(service: Service, tenant: SeededTenant) -> float:
    """Suspend ``tenant``; seconds until no worker serves it (20 answers in a row 403)."""
    response = _admin(service, f"/v1/admin/tenants/{tenant.id}/suspend")
    assert response.status_code == 200, response.text
    suspended = time.monotonic()
    refused_in_a_row, last_served = 0, 0.0
    while refused_in_a_row < 20:
        assert time.monotonic() - suspended < REFUSED_WITHIN + 5, "still served"
        outcome, _ = request(
            "GET", service.url + "/v1/users", headers=tenant.headers, timeout=REQUEST_TIMEOUT
        )
        assert outcome.status in (200, 403, 503), outcome
        if outcome.status == 403:
            refused_in_a_row += 1
        else:
            refused_in_a_row, last_served = 0, time.monotonic() - suspended
    return last_served


def _during(write: Write, start: float, end: float) -> bool:
    """Whether ``write`` was acknowledged around [start, end] (give or take a second: the
    asynchronous standby's lag, a transaction begun before the demotion committing after)."""
    outcome = write.outcome
    return outcome is not None and start - 1 <= outcome.started + outcome.elapsed <= end + 1


def _on_the_new_primary(service: Service, tenants: list[SeededTenant], writes: list[Write]) -> None:
    """Each write is there exactly once, read back as its tenant (a pool that still held a
    connection to the old primary answers its one 503 first: asked again)."""
    by_id = {tenant.id: tenant for tenant in tenants}
    for write in writes:
        marker_field = RESOURCES[write.path][0]
        for _attempt in range(5):
            outcome, response = request(
                "GET",
                service.url + write.path,
                params={"search": write.marker, "search_columns": marker_field},
                headers=by_id[write.tenant_id].headers,
                timeout=REQUEST_TIMEOUT,
            )
            if outcome.status != 503:
                break
            assert outcome.retry_after == "1", outcome
        assert outcome.status == 200, outcome
        assert response.json()["total"] == 1, write.marker


def _under_load(
    service: Service, tenants: list[SeededTenant], ledger: Ledger, threads: int
) -> MixedLoad:
    return MixedLoad(service.url, tenants, ledger, threads=threads, timeout=REQUEST_TIMEOUT)


@pytest.mark.parametrize(
    ("way", "threads", "settle"),
    [
        ("shared", 4, 0.0),
        pytest.param("dedicated", 8, 10.0, marks=pytest.mark.soak),
        pytest.param("shared", 8, 10.0, marks=pytest.mark.soak),
    ],
)
def test_failover_under_load_loses_no_acknowledged_write(
    chain: Chain, start_fault_service: StartService, way: str, threads: int, settle: float
) -> None:
    old = chain.primary
    standby = chain.standby(old, chain.standby_port, "standby1")
    require_synchronous(old, "standby1")
    service = start_fault_service(chain.env["APP_DATABASE_URL"], APP_SERVING=way)
    loaded, spare = chain.tenants[:2], chain.tenants[2]
    for _ in range(10):  # every worker caches the spare tenant, to be suspended later
        assert requests.get(service.url + "/v1/users", headers=spare.headers, timeout=10).ok

    ledger = Ledger()
    with _under_load(service, loaded, ledger, threads) as load:
        load.wait_until(lambda done: sum(o.ok for o in done) >= 20, 30, "20 successes")
        old.stop(mode="immediate")
        stopped = time.monotonic()
        promote(standby)
        promoted = time.monotonic()
        load.wait_until(_writes_after(promoted), RECOVERY + 10, "10 writes after the promotion")
        refused_after = _refused_by_every_worker(service, spare)
        time.sleep(settle)
    first = _figures(load.outcomes, promoted)
    print(first.line(f"{way}: primary stopped -m immediate, synchronous standby promoted"))
    print(f"{way}: promoted {promoted - stopped:.2f} s after the stop")
    print(f"{way}: suspended tenant last served {refused_after:.2f} s after its suspension")
    _check_answers(load.outcomes)
    assert first.recovery < RECOVERY
    assert refused_after < REFUSED_WITHIN
    ledger.verify(service.url, loaded)  # every acknowledged write on the new primary, once

    # The old primary left up and made read-only after a standby's promotion.
    newer = chain.standby(standby, chain.spare_port, "standby2")
    ledger = Ledger()
    with _under_load(service, loaded, ledger, threads) as load:
        load.wait_until(lambda done: sum(o.ok for o in done) >= 20, 30, "20 successes")
        promoting = time.monotonic()
        promote(newer)
        demote_in_place(standby)
        demoted = time.monotonic()
        load.wait_until(_writes_after(demoted), RECOVERY + 10, "10 writes after the demotion")
        time.sleep(settle)
    # Writes the old primary acknowledged while the new one was promoted (not streamed to it
    # yet: it was an asynchronous standby) or before its demotion are not on the new one
    # (split brain: why a failover manager demotes or fences first); reading one back is a
    # 404. Anything else is held to the same rules as above.
    split = {w.record_id for w in ledger.writes if w.record_id and _during(w, promoting, demoted)}
    lost = [o for o in load.outcomes if o.status == 404 and o.path.rsplit("/", 1)[-1] in split]
    outcomes = [o for o in load.outcomes if o not in lost]
    second = _figures(outcomes, demoted)
    print(second.line(f"{way}: old primary demoted in place after a promotion"))
    print(f"{way}: {len(split)} write(s) acknowledged around the split window (not required)")
    _check_answers(outcomes)
    assert second.recovery < RECOVERY
    acknowledged = [
        w for w in ledger.writes if w.record_id and w.outcome and w.outcome.started > demoted
    ]
    _on_the_new_primary(service, loaded, acknowledged)
    _record(way, first, second, refused_after)


def _record(way: str, first: Figures, second: Figures, refused_after: float) -> None:
    """Append the figures to $FAILOVER_FIGURES (a JSON-lines file) when it is set."""
    path = os.environ.get("FAILOVER_FIGURES")
    if not path:
        return
    with Path(path).open("a") as handle:
        handle.write(
            json.dumps(
                {
                    "way": way,
                    "stopped_promoted": first.__dict__,
                    "demoted_in_place": second.__dict__,
                    "suspended_refused_after": refused_after,
                }
            )
            + "\n"
        )
