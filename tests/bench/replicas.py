"""``make bench``: reads through a read replica against reads on the primary, and a token's cost.

One streaming standby of the bench cluster (``pg_basebackup``, on the same machine), two
services in the default way: one with ``APP_READ_REPLICAS`` naming the standby, one without
(every read on the primary). Round after round, in rotating order, wrk drives the same
read scenario at: the primary's service, the replica's, and the replica's again with an
``X-Consistency-Token`` the replica has replayed (so the same server answers, and the
difference is the token's check). Both services and both PostgreSQL servers share this
machine's cores: the ratio says what routing a read to a replica costs or saves here, not
what a replica on its own machine adds.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from app.dev.cluster import LocalCluster
from app.dev.standby import make_standby
from tests.bench import load, stack
from tests.bench.report import Run, Scenario

LABELS = ("primary", "replica", "replica+token")
"""The apps of the replica runs, as ``Run.app``."""


def measure(
    db: stack.Database,
    env: dict[str, str],
    scenario: Scenario,
    tenants_file: Path,
    tenant: stack.Tenant,
    *,
    rounds: int,
    run_wrk: Callable[..., load.WrkResult],
    make_run: Callable[[str, int, load.WrkResult], Run],
    work: Path,
    say: Callable[[str], None],
) -> list[Run]:
    """The replica runs (``Run.app`` in LABELS) on ``scenario``; the standby removed after."""
    standby = _standby(db, say)
    try:
        replicas = {"default": [f"postgresql://127.0.0.1:{standby.port}/{stack.DATABASE}"]}
        replica_env = {**env, "APP_READ_REPLICAS": json.dumps(replicas)}
        runs: list[Run] = []
        with (
            stack.Server("primary-reads", _ARGS, env, work / "service-primary.log") as primary,
            stack.Server("replica-reads", _ARGS, replica_env, work / "service-replica.log") as rep,
        ):
            token = _token(rep.url, tenant)
            servers = {
                "primary": (primary, ""),
                "replica": (rep, ""),
                "replica+token": (rep, token),
            }
            for url, given in ((primary.url, ""), (rep.url, ""), (rep.url, token)):
                run_wrk(scenario, url, 3.0, given)  # warm up; the watchers probe meanwhile
            for number in range(1, rounds + 1):
                order = LABELS[number % 3 :] + LABELS[: number % 3]
                for label in order:
                    server, given = servers[label]
                    result = run_wrk(scenario, server.url, None, given)
                    runs.append(make_run(label, number, result))
                    say(
                        f"replica round {number} {label}: {result.rps:.0f} req/s, "
                        f"p50 {result.p50_ms:.1f} ms, {result.errors} errors"
                    )
        return runs
    finally:
        standby.stop("immediate")


_ARGS = ["-c", "gunicorn.conf.py", "wsgi:app"]


def _standby(db: stack.Database, say: Callable[[str], None]) -> LocalCluster:
    """A streaming standby of the bench cluster, as many connections as it allows."""
    with db.superuser() as cursor:
        cursor.execute("SHOW max_connections")
        (max_connections,) = cursor.fetchone()
    say("making a streaming standby of the bench cluster (pg_basebackup)")
    return make_standby(
        db.cluster,
        db.cluster.datadir.parent / "replica",
        max_connections=int(max_connections),
        extra_settings=stack.SERVER_SETTINGS,
    )


def _token(url: str, tenant: stack.Tenant) -> str:
    """A write's token, once every worker's replica has replayed it (probes every second)."""
    request = urllib.request.Request(  # noqa: S310 - our own server on loopback
        f"{url}/v1/users",
        data=json.dumps({"first_name": "Token", "last_name": "Bench"}).encode(),
        headers={
            "Content-Type": "application/json",
            "X-Tenant-ID": tenant.id,
            "Authorization": f"Bearer {tenant.api_key}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        token = str(response.headers["X-Consistency-Token"])
    time.sleep(3.0)
    return token
