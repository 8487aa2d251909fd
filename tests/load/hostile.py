"""Hostile and noisy tenants against a real service: the figures of issue 18.

    python -m tests.load.hostile [--seconds 15] [--rows 100000] [--workers 4] [--threads 4]

Starts its own PostgreSQL cluster and gunicorn (as `make run` would serve), seeds a quiet
and a noisy tenant (the noisy one with ``--rows`` users), and measures:

1. the quiet tenant's ``GET /v1/users`` p99 alone, then while the noisy tenant floods
   searches that match nothing over 64 connections (wrk), with the fair share on and, for
   comparison, off (``APP_TENANT_THREAD_SHARE`` = threads, ``APP_TENANT_NODE_SHARE`` =
   workers x threads); the quiet tenant must see 2xx only;
2. the workers' memory (RSS, summed) before and after 1500 list requests whose
   ``search_columns`` repeat and reorder names, and their statuses (no 5xx);
3. 2000 requests naming random unknown tenants: their statuses and the control plane's
   transactions meanwhile (``pg_stat_database``).

Prints one JSON object. Not collected by pytest; needs wrk (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import requests
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app import create_app  # noqa: E402 - after the path
from app.tenancy import tenancy_of  # noqa: E402
from config import load_settings  # noqa: E402
from tests.conftest import throwaway_cluster, upgrade_database  # noqa: E402
from tests.e2e.conftest import SeededTenant, seed, start_service, stop_service  # noqa: E402
from tests.support import child_pids  # noqa: E402

NOISY_PATH = "/v1/users?search=no-such-text&sort_column=last_name"
COLUMNS = ("first_name", "last_name", "email")


def _env(owner_url: str) -> dict[str, str]:
    return {
        "APP_ENV": "testing",
        "APP_DATABASE_URL": owner_url,
        "APP_ENCRYPTION_KEYS": f"load1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "load1",
        "APP_ADMIN_TOKEN": secrets.token_urlsafe(32),
        "APP_SCRAM_ITERATIONS": "64",
    }


def _fill(env: dict[str, str], tenant: SeededTenant, rows: int) -> None:
    """``rows`` users of the tenant, written as the tenant (its own role and RLS)."""
    app = create_app(load_settings(env))
    tenancy = tenancy_of(app)
    try:
        session = tenancy.open_session(uuid.UUID(tenant.id))
        session.execute(sa.text("SET LOCAL statement_timeout = 0"))
        session.execute(
            sa.text(
                "INSERT INTO users (first_name, last_name, email) SELECT 'Noisy', 'N' || g, "
                "'n' || g || '@example.com' FROM generate_series(1, :rows) AS g"
            ),
            {"rows": rows},
        )
        session.commit()
        session.close()
        with tenancy.control_engine.begin() as connection:
            connection.execute(sa.text("ANALYZE users"))
    finally:
        tenancy.close()


def _found(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return None if match is None else match.group(1)


def _wrk_command(tenant: SeededTenant, url: str, connections: int, seconds: float) -> list[str]:
    return [
        "wrk",
        f"-c{connections}",
        f"-t{min(connections, 2)}",
        f"-d{seconds:.0f}s",
        "--latency",
        "--timeout",
        "30s",
        "-H",
        f"X-Tenant-ID: {tenant.id}",
        "-H",
        f"Authorization: Bearer {tenant.api_key}",
        url,
    ]


def _figures(output: str) -> dict[str, Any]:
    """wrk's request count, non-2xx count and latency percentiles."""
    return {
        "requests": int(_found(r"(\d+) requests in", output) or 0),
        "non_2xx": int(_found(r"Non-2xx or 3xx responses: (\d+)", output) or 0),
        "p50_ms": _ms(_found(r"^\s+50%\s+(\S+)", output) or "0ms"),
        "p99_ms": _ms(_found(r"^\s+99%\s+(\S+)", output) or "0ms"),
    }


def _wrk(url: str, tenant: SeededTenant, *, connections: int, seconds: float) -> dict[str, Any]:
    command = _wrk_command(tenant, url, connections, seconds)
    return _figures(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


@contextlib.contextmanager
def _service(
    env: dict[str, str], folder: Path, args: argparse.Namespace, **extra: str
) -> Iterator[Any]:
    log = folder / f"gunicorn-{uuid.uuid4().hex[:8]}.log"
    process, service = start_service(
        {**env, **extra}, log, workers=args.workers, threads=args.threads
    )
    try:
        yield service
    finally:
        stop_service(process)


def _flood(
    service: Any, noisy: SeededTenant, quiet: SeededTenant, seconds: float
) -> dict[str, Any]:
    """The quiet tenant alone, then while the noisy one floods searches over 64 connections."""
    alone = _wrk(service.url + "/v1/users", quiet, connections=1, seconds=seconds)
    command = _wrk_command(noisy, service.url + NOISY_PATH, 64, seconds + 6)
    flood = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    crowded = _wrk(service.url + "/v1/users", quiet, connections=1, seconds=seconds)
    noisy_output, _ = flood.communicate()
    return {
        "quiet_alone": alone,
        "quiet_under_flood": crowded,
        "p99_ratio": round(crowded["p99_ms"] / alone["p99_ms"], 1),
        "noisy": _figures(noisy_output),
    }


def _rss_mb(master_pid: int) -> float:
    total = 0
    for pid in child_pids(master_pid):
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(_found(r"^VmRSS:\s+(\d+) kB", status) or 0)
    return round(total / 1024, 1)


def _shapes(service: Any, tenant: SeededTenant, count: int = 1500) -> dict[str, Any]:
    """``count`` searches spelling search_columns every way; the workers' RSS around them."""
    chooser = random.Random(18)
    before = _rss_mb(service.pid)
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        for number in range(count):
            spelled = [chooser.choice(COLUMNS) for _ in range(chooser.randint(1, 8))]
            params = {"search": f"t{number}", "search_columns": ",".join(spelled)}
            answer = session.get(
                service.url + "/v1/users", params=params, headers=tenant.headers, timeout=30
            )
            statuses[answer.status_code] += 1
    after = _rss_mb(service.pid)
    return {
        "requests": count,
        "statuses": dict(statuses),
        "rss_before_mb": before,
        "rss_after_mb": after,
        "rss_growth_mb": round(after - before, 1),
    }


def _transactions(superuser_url: str, database: str) -> int:
    connection = psycopg2.connect(superuser_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (database,),
            )
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


_STATISTICS_FLUSHED = 11.0


def _unknown(service: Any, superuser_url: str, count: int = 2000) -> dict[str, Any]:
    """``count`` requests naming random unknown tenants; control-plane transactions meanwhile."""
    # An idle backend flushes its statistics up to PGSTAT_IDLE_INTERVAL (10 s) after its last
    # transaction: wait that long on either side, so that the counts of the earlier phases
    # are in "before" and those of these requests in "after".
    time.sleep(_STATISTICS_FLUSHED)
    before = _transactions(superuser_url, "tenantpool")
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        for _ in range(count):
            headers = {
                "X-Tenant-ID": str(uuid.uuid4()),
                "Authorization": f"Bearer tpk_{secrets.token_urlsafe(32)}",
            }
            answer = session.get(service.url + "/v1/users", headers=headers, timeout=30)
            statuses[answer.status_code] += 1
    time.sleep(_STATISTICS_FLUSHED)
    spent = _transactions(superuser_url, "tenantpool") - before - 1  # minus our own read
    return {"requests": count, "statuses": dict(statuses), "control_plane_transactions": spent}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--share", type=int, default=None, help="APP_TENANT_THREAD_SHARE (default: the product's)"
    )
    parser.add_argument(
        "--node-share", type=int, default=None, help="APP_TENANT_NODE_SHARE (default: cores)"
    )
    parser.add_argument("--flood-only", action="store_true", help="measure the flood only")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "workers": args.workers,
        "threads": args.threads,
        "noisy_rows": args.rows,
    }
    with throwaway_cluster(max_connections=200) as cluster, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        owner_url = cluster.bootstrap_owner("tenantpool", secrets.token_urlsafe(24), "tenantpool")
        env = _env(owner_url)
        upgrade_database(env)
        noisy, quiet = seed(
            env, folder / "tenants.json", count=2, prefix="load", users_per_tenant=20
        )
        _fill(env, noisy, args.rows)
        share = {} if args.share is None else {"APP_TENANT_THREAD_SHARE": str(args.share)}
        if args.node_share is not None:
            share["APP_TENANT_NODE_SHARE"] = str(args.node_share)
        with _service(env, folder, args, **share) as service:
            figures["fair_share_on"] = _flood(service, noisy, quiet, args.seconds)
            if not args.flood_only:
                figures["search_columns_spellings"] = _shapes(service, quiet)
                superuser_url = cluster.superuser_url("tenantpool")
                figures["unknown_tenants"] = _unknown(service, superuser_url)
        off = {
            "APP_TENANT_THREAD_SHARE": str(args.threads),
            "APP_TENANT_NODE_SHARE": str(args.workers * args.threads),
        }
        with _service(env, folder, args, **off) as service:
            figures["fair_share_off"] = _flood(service, noisy, quiet, args.seconds)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
