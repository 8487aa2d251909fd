"""``make bench`` (``python -m tests.bench.run``): the service against a bare baseline.

Starts its own PostgreSQL cluster, seeds tenants with ``flask seed-tenants``, serves the
service (gunicorn.conf.py) and the baseline (tests/bench/baseline_app.py) with the same
gunicorn settings, drives both with wrk, interleaved, and writes docs/benchmarks.md and
docs/benchmarks/*.png. Progress goes to stderr as it happens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

from app.capacity import LISTENER_CONNECTIONS
from app.db import CONTROL_POOL_MAX
from app.tenancy.control.scram import scram_sha256_verifier
from config import load_settings
from tests.bench import baseline_app, load, report, stack
from tests.bench.report import AFFINE, DEFAULTS, SHARED, Figures, Run, Scenario, Setup
from tests.support import REPO_ROOT

DOCS = REPO_ROOT / "docs"
WORK = REPO_ROOT / "var" / "bench"
FIGURES_FILE = WORK / "figures.json"
LIST_PATH = "/v1/users?page=1&page_size=20"
SCENARIOS = (
    Scenario("users_1", "GET /v1/users, 1 tenant", "GET", LIST_PATH, 1, "uniform"),
    Scenario("users_100", "GET /v1/users, 100 tenants", "GET", LIST_PATH, 100, "uniform"),
    Scenario("users_1000", "GET /v1/users, 1000 tenants", "GET", LIST_PATH, 1000, "uniform"),
    Scenario(
        "users_1000_zipf", "GET /v1/users, 1000 tenants Zipf(1.1)", "GET", LIST_PATH, 1000, "zipf"
    ),
    Scenario("create_users", "POST /v1/users, 100 tenants", "POST", "/v1/users", 100, "uniform"),
)
USERS_PER_TENANT = 20
WORKERS = 4
DEFAULT_BUDGET_SCENARIOS = ("users_100", "users_1000_zipf")
"""Where the service also runs with every setting at its default, to show what sizing buys."""
AFFINE_SCENARIOS = ("users_100", "users_1000", "users_1000_zipf")
"""Where the apps also run tenant-affine (HAProxy over single-worker gunicorns)."""
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
BESIDE_THE_SERVICE = 100
"""Server connections left to what runs beside the service: the baseline, probes, commands."""
_started = time.monotonic()


def say(message: str) -> None:
    print(f"bench [{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    """CPU, cores, memory, OS and the versions that matter, read from this machine."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    os_name = platform.platform()
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    wrk = subprocess.run(
        [load.wrk_path(), "--version"], capture_output=True, text=True, check=False
    )
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("flask", "gunicorn", "sqlalchemy", "psycopg2-binary", "marshmallow")
    )
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "OS": os_name,
        "Python": platform.python_version(),
        "libraries": versions,
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip(),
    }


def setup_baseline(db: stack.Database, tenants: list[stack.Tenant]) -> str:
    """A ``baseline`` role and database with the same rows per tenant id; its URL."""
    password = secrets.token_urlsafe(24)
    with db.superuser("postgres") as cursor:
        cursor.execute("CREATE ROLE baseline LOGIN PASSWORD %s", (password,))
        cursor.execute("CREATE DATABASE baseline OWNER baseline")
    url = sa.make_url(db.owner_url).set(
        drivername="postgresql+psycopg2",
        username="baseline",
        password=password,
        database="baseline",
    )
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        baseline_app.setup_schema(connection)
        connection.exec_driver_sql(
            "INSERT INTO users (tenant_id, first_name, last_name, email, confirmed) "
            "SELECT t::uuid, 'Ada', 'Lovelace', 'user' || n || '@example.com', n %% 2 = 0 "
            "FROM unnest(%(ids)s::text[]) AS t, generate_series(1, %(n)s) AS n",
            {"ids": [t.id for t in tenants], "n": USERS_PER_TENANT},
        )
        connection.exec_driver_sql("ANALYZE users")
    engine.dispose()
    return url.render_as_string(hide_password=False)


def scram_connect_times(db: stack.Database, rounds: int) -> dict[int, float]:
    """Median connect ms as a role whose verifier has 4096 vs 64 iterations."""
    dsns = {}
    with db.superuser() as cursor:
        for iterations in (4096, 64):
            password = secrets.token_urlsafe(32)
            verifier = scram_sha256_verifier(password, iterations)
            # A verifier is base64 and '$:' only (checked by scram_sha256_verifier's format).
            cursor.execute(f"CREATE ROLE scram_{iterations} LOGIN PASSWORD '{verifier}'")
            url = sa.make_url(db.owner_url).set(
                username=f"scram_{iterations}", password=password, database="postgres"
            )
            dsns[str(iterations)] = url.render_as_string(hide_password=False)
    medians = load.connect_times(dsns, rounds)
    return {int(k): v for k, v in medians.items()}


def sized_settings(tenants: int) -> dict[str, str]:
    """The service's ``APP_*`` for the bench cluster, sized as docs/operations.md says.

    The server's connections, less the superuser reserve and what runs beside the
    service, shared by the workers; each worker's control-plane pool and listener come
    out of its share. Enough engines for every tenant.
    """
    usable = stack.MAX_CONNECTIONS - SUPERUSER_RESERVED - BESIDE_THE_SERVICE
    budget = usable // WORKERS - (CONTROL_POOL_MAX + LISTENER_CONNECTIONS)
    return {"APP_CONNECTION_BUDGET": str(budget), "APP_MAX_ENGINES": str(max(tenants, 200))}


def count_round_trips(
    db: stack.Database, service: stack.Server, baseline: stack.Server, tenant: stack.Tenant
) -> dict[str, tuple[float, float]]:
    """Simple-query messages per warm request: the tenant's connections, the baseline's.

    Runs before any other request to the baseline, so that its pooled connections are
    opened after the ALTER ROLE and log their statements.
    """
    roles = (f"t_{tenant.id.replace('-', '')}", "baseline")
    with db.superuser() as cursor:
        for role in roles:
            cursor.execute(f"ALTER ROLE \"{role}\" SET log_statement = 'all'")
    try:
        requests = 20
        out = {}
        for label, method, path in (
            ("GET /v1/users?page_size=20", "GET", LIST_PATH),
            ("POST /v1/users", "POST", "/v1/users"),
        ):
            counts = []
            for server in (service, baseline):
                offset = 0

                def mark() -> None:
                    nonlocal offset
                    time.sleep(0.5)  # the server log is written asynchronously
                    offset = db.cluster.log_path.stat().st_size

                # Warm first, on the same keep-alive connection (so the same worker): the
                # engine and a pooled connection (opened after the ALTER) exist, and what
                # a worker asks once on its first connect is not counted.
                load.requests_on_one_connection(
                    server.url, tenant, method, path, requests, warm=3, after_warm=mark
                )
                time.sleep(0.5)
                with db.cluster.log_path.open(errors="replace") as handle:
                    handle.seek(offset)
                    logged = sum(1 for line in handle if " statement: " in line)
                counts.append(logged / requests)
            out[label] = (counts[0], counts[1])
    finally:
        with db.superuser() as cursor:
            for role in roles:
                cursor.execute(f'ALTER ROLE "{role}" RESET log_statement')
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=12, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to seed")
    parser.add_argument("--cold", type=int, default=300, help="tenants in the cold-start test")
    parser.add_argument(
        "--scenarios", default=",".join(s.key for s in SCENARIOS), help="comma-separated keys"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="FIGURES",
        help=f"measure nothing: write docs/ from a saved run (each run saves {FIGURES_FILE})",
    )
    args_given = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(args_given)
    if args.render is not None:
        _write(report.load(args.render), args.no_write)
        return 0
    wanted = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.key in wanted and s.tenants <= args.tenants]
    load.wrk_path()  # fail now, not after seeding
    stack.haproxy_path()
    WORK.mkdir(parents=True, exist_ok=True)
    figures = Figures(
        scenarios=scenarios,
        command=" ".join(["make bench (python -m tests.bench.run", *map(shlex.quote, args_given)])
        + ")",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    figures.machine = machine()
    say("starting a PostgreSQL cluster and applying migrations")
    with stack.database() as db:
        default_env = {**db.env, "APP_WORKERS": str(WORKERS)}
        threads = load_settings(default_env).threads
        default_env["APP_THREADS"] = str(threads)
        figures.machine["PostgreSQL"] = _server_version(db)
        say(f"seeding {args.tenants} tenants x {USERS_PER_TENANT} users with flask seed-tenants")
        tenants, figures.seed_seconds = stack.seed(
            db.env, WORK / "tenants.json", count=args.tenants, users=USERS_PER_TENANT
        )
        figures.seed_tenants, figures.seed_users = len(tenants), USERS_PER_TENANT
        say(f"seeded in {figures.seed_seconds:.1f} s; setting up the baseline database")
        baseline_url = setup_baseline(db, tenants)
        tenant_files = {}
        for count in sorted({s.tenants for s in scenarios}):
            tenant_files[count] = WORK / f"tenants-{count}.lua"
            tenant_files[count].write_text(load.lua_tenants(tenants[:count]))
        say("measuring connect time at SCRAM iterations 4096 and 64")
        figures.connect_ms = scram_connect_times(db, rounds=60)
        sized = sized_settings(len(tenants))
        service_env = {**default_env, **sized}
        figures.settings = {
            "gunicorn": f"{WORKERS} workers x {threads} threads (gthread), all apps",
            "wrk": f"{args.wrk_threads} threads, {args.connections} connections, "
            f"{args.seconds:g} s per run, {args.rounds} rounds, after a warm-up of "
            "max(3 s, tenants / 100 s) per target",
            "data": f"{len(tenants)} tenants x {USERS_PER_TENANT} users; page_size=20",
            "PostgreSQL": f"max_connections={stack.MAX_CONNECTIONS}, "
            + ", ".join(f"{k}={v}" for k, v in stack.SERVER_SETTINGS.items()),
            "service": ", ".join(f"{k}={v}" for k, v in sized.items())
            + f" (({stack.MAX_CONNECTIONS} - {SUPERUSER_RESERVED} reserved - "
            f"{BESIDE_THE_SERVICE} for the baseline and tools) / {WORKERS} workers - "
            f"{CONTROL_POOL_MAX + LISTENER_CONNECTIONS} control-plane and listener); "
            "APP_ENV=production, defaults otherwise",
            "service (defaults)": "APP_ENV=production, every other APP_* at its default",
            "service (tenant-affine)": "as service, APP_WORKERS=1 in each of the "
            f"{WORKERS} gunicorns",
        }
        baseline_env = {
            "BASELINE_DATABASE_URL": baseline_url,
            "APP_WORKERS": str(WORKERS),
            "APP_THREADS": str(threads),
        }
        service_args = ["-c", "gunicorn.conf.py", "wsgi:app"]
        baseline_args = [
            "-c",
            "python:tests.bench.baseline_gunicorn",
            "tests.bench.baseline_app:create_app()",
        ]
        say(f"starting the service and the baseline ({WORKERS} workers x {threads} threads)")
        with stack.Server(
            "baseline", baseline_args, baseline_env, WORK / "baseline.log"
        ) as baseline:
            with stack.Server(
                "service", service_args, service_env, WORK / "service.log"
            ) as service:
                figures.round_trips = count_round_trips(db, service, baseline, tenants[0])
                say(f"round trips per request (service, baseline): {figures.round_trips}")
                _measure(db, scenarios, SHARED, service, baseline, tenant_files, args, figures)
            chosen = [s for s in scenarios if s.key in DEFAULT_BUDGET_SCENARIOS]
            if chosen:
                say("the service again, every setting at its default")
                with stack.Server(
                    "service-defaults", service_args, default_env, WORK / "service-defaults.log"
                ) as service:
                    _measure(db, chosen, DEFAULTS, service, baseline, tenant_files, args, figures)
        chosen = [s for s in scenarios if s.key in AFFINE_SCENARIOS]
        if chosen:
            say(f"tenant-affine: HAProxy over {WORKERS} single-worker gunicorns per app")
            with contextlib.ExitStack() as running:

                def affine(
                    name: str, gunicorn_args: list[str], env: dict[str, str]
                ) -> stack.Server:
                    """``WORKERS`` single-worker gunicorns behind HAProxy, which is returned."""
                    servers = [
                        running.enter_context(
                            stack.Server(
                                f"{name}-{n}",
                                gunicorn_args,
                                {**env, "APP_WORKERS": "1"},
                                WORK / f"{name}-affine-{n}.log",
                            )
                        )
                        for n in range(WORKERS)
                    ]
                    return running.enter_context(stack.TenantAffineProxy(name, servers, WORK))

                service_proxy = affine("service", service_args, service_env)
                baseline_proxy = affine("baseline", baseline_args, baseline_env)
                _measure(
                    db, chosen, AFFINE, service_proxy, baseline_proxy, tenant_files, args, figures
                )
        if args.cold:
            cold = tenants[: args.cold]
            say(f"cold tenants: first request of {len(cold)} tenants after a fresh start")
            with stack.Server(
                "service", service_args, service_env, WORK / "service-cold.log"
            ) as service:
                figures.cold_ms = load.first_requests(service.url, cold, LIST_PATH)
            say(
                f"cold p50 {report.percentile(figures.cold_ms, 0.5):.1f} ms, "
                f"p99 {report.percentile(figures.cold_ms, 0.99):.1f} ms"
            )
    report.save(figures, FIGURES_FILE)
    say(f"saved the figures to {FIGURES_FILE}")
    _write(figures, args.no_write)
    return 0


def _measure(
    db: stack.Database,
    scenarios: list[Scenario],
    setup: Setup,
    service: stack.Server,
    baseline: stack.Server,
    tenant_files: dict[int, Path],
    args: argparse.Namespace,
    figures: Figures,
) -> None:
    """Every scenario, round after round, each round running service then baseline."""
    superuser_url = db.cluster.superuser_url()
    targets = ((setup.service, service, "tp"), (setup.baseline, baseline, "baseline"))
    for scenario in scenarios:
        for round_number in range(1, args.rounds + 1):
            for target, server, backends in targets:
                if round_number == 1:
                    _wrk(scenario, server.url, tenant_files, args, warm_up_seconds(scenario))
                with load.ConnectionSampler(superuser_url) as sampler:
                    result = _wrk(scenario, server.url, tenant_files, args, args.seconds)
                run = Run(
                    scenario=scenario.key,
                    target=target,
                    round=round_number,
                    rps=result.rps,
                    p50_ms=result.p50_ms,
                    p99_ms=result.p99_ms,
                    errors=result.errors,
                    requests=result.requests,
                    peak_connections=sampler.peak[backends],
                )
                figures.runs.append(run)
                say(
                    f"{scenario.key} round {round_number} {target}: {run.rps:.0f} req/s, "
                    f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
                    f"{run.errors} errors, {run.peak_connections} connections"
                )


def warm_up_seconds(scenario: Scenario) -> float:
    """Load before a scenario's first round: longer with more tenants to log in.

    The rounds measure the steady state; what a tenant's first request costs is measured
    apart (cold tenants).
    """
    return max(3.0, scenario.tenants / 100)


def _wrk(
    scenario: Scenario,
    url: str,
    files: dict[int, Path],
    args: argparse.Namespace,
    seconds: float,
) -> load.WrkResult:
    return load.run_wrk(
        url,
        files[scenario.tenants],
        distribution=scenario.distribution,
        method=scenario.method,
        path=scenario.path,
        seconds=seconds,
        connections=args.connections,
        threads=args.wrk_threads,
    )


def _server_version(db: stack.Database) -> str:
    with db.superuser() as cursor:
        cursor.execute("SHOW server_version")
        (version,) = cursor.fetchone()
    return str(version)


def _write(figures: Figures, dry_run: bool) -> None:
    if dry_run:
        print(report.render_markdown(figures))
        return
    plots = report.plot(figures, DOCS / "benchmarks")
    markdown = report.render_markdown(figures, [str(p.relative_to(DOCS)) for p in plots])
    (DOCS / "benchmarks.md").write_text(markdown)
    say(f"wrote {DOCS / 'benchmarks.md'} and {len(plots)} plots")
    for target, measured, met in report.targets(figures):
        say(f"target {'met    ' if met else 'NOT MET'} {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
