"""``make bench`` (``python -m tests.bench.run``): the service against a bare baseline.

Starts its own PostgreSQL cluster and seeds tenants with ``flask seed-tenants``; copies
their rows into the baseline's database through the service's API. Then, per cluster
(``max_connections`` 100 with the service at its defaults, 2000 with it sized for it; one
cluster restarted between) and per way of serving (``APP_SERVING``), it serves the service
(gunicorn.conf.py) and the baseline (tests/bench/baseline_app.py) with the same gunicorn
settings, checks that both answer alike, and drives both with wrk, interleaved. On the
stock cluster the shared way is also profiled (py-spy) and its verifier measured apart.
Writes docs/benchmarks.md and docs/benchmarks/*.png. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psycopg2
import sqlalchemy as sa

from app.capacity import LISTENER_CONNECTIONS
from app.db import CONTROL_POOL_MAX
from app.tenancy.control.ddl import POLICY_NAME, POLICY_PREDICATE, UNVERIFIED_PREDICATE
from app.tenancy.control.scram import scram_sha256_verifier
from config import Settings, load_settings
from tests.bench import baseline_app, load, profile, replicas, report, rows, stack
from tests.bench.otlp_sink import OtlpSink
from tests.bench.report import STOCK, WAYS, Deployment, Figures, Run, Scenario
from tests.support import REPO_ROOT

DOCS = REPO_ROOT / "docs"
WORK = REPO_ROOT / "var" / "bench"
FIGURES_FILE = WORK / "figures.json"
UNWRITTEN_FIGURES_FILE = WORK / "figures-unwritten.json"
"""Where a ``--no-write`` run saves its figures: those behind docs/ stay in FIGURES_FILE."""
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
APART = "users_100"
"""The scenario of the profile and of the verifier's runs (shared, max_connections 100)."""
CLUSTERS = (STOCK, 2000)
USERS_PER_TENANT = 20
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
BESIDE_THE_SERVICE = 100
"""Server connections left to what runs beside a sized service: the baseline, probes, tools."""
BASELINE_DATABASE = "baseline"
SERVICE_ARGS = ["-c", "gunicorn.conf.py", "wsgi:app"]
BASELINE_ARGS = [
    "-c",
    "python:tests.bench.baseline_gunicorn",
    "tests.bench.baseline_app:create_app()",
]
ROUND_TRIP_REQUESTS = (
    ("GET /v1/users?page_size=20", "GET", LIST_PATH),
    ("POST /v1/users", "POST", "/v1/users"),
)
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


def setup_baseline(db: stack.Database, users: dict[str, list[dict[str, object]]]) -> str:
    """A ``baseline`` role and database holding ``users`` (tenant id -> records); its password."""
    password = secrets.token_urlsafe(24)
    with db.superuser("postgres") as cursor:
        cursor.execute("CREATE ROLE baseline LOGIN PASSWORD %s", (password,))
        cursor.execute(f"CREATE DATABASE {BASELINE_DATABASE} OWNER baseline")
    engine = sa.create_engine(baseline_url(db, password))
    with engine.begin() as connection:
        baseline_app.setup_schema(connection)
        baseline_app.insert_users(connection, users)
        connection.exec_driver_sql("ANALYZE users")
    engine.dispose()
    return password


def baseline_url(db: stack.Database, password: str) -> str:
    url = sa.make_url(db.owner_url).set(
        drivername="postgresql+psycopg2",
        username="baseline",
        password=password,
        database=BASELINE_DATABASE,
    )
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


def sized_settings(
    max_connections: int, way: str, tenants: int, defaults: Settings
) -> dict[str, str]:
    """The service's ``APP_*`` for a cluster of ``max_connections``, as docs/operations.md says.

    The server's connections, less the superuser reserve and what runs beside the
    service, shared by the workers; each worker's control-plane pool and listener, and its
    gateway pool unless dedicated, come out of its share. Enough engines for every tenant.
    """
    usable = max_connections - SUPERUSER_RESERVED - BESIDE_THE_SERVICE
    gateways = defaults.gateway_pool_size if way != "dedicated" else 0
    budget = usable // defaults.workers - (CONTROL_POOL_MAX + LISTENER_CONNECTIONS) - gateways
    return {"APP_CONNECTION_BUDGET": str(budget), "APP_MAX_ENGINES": str(max(tenants, 200))}


def service_env(db: stack.Database, cluster: int, way: str, tenants: int) -> dict[str, str]:
    """The service's environment: defaults on the stock cluster, sized on any other."""
    env = {**db.env, "APP_SERVING": way}
    if cluster != STOCK:
        env |= sized_settings(cluster, way, tenants, load_settings(env))
    return env


def deployment(db: stack.Database, cluster: int, way: str, env: dict[str, str]) -> Deployment:
    settings = load_settings(env)
    given = [f"{k}={v}" for k, v in env.items() if k not in db.env and k != "APP_SERVING"]
    return Deployment(
        cluster=cluster,
        way=way,
        workers=settings.workers,
        threads=settings.threads,
        budget=settings.connection_budget,
        gateway_pool=settings.gateway_pool_size,
        settings=", ".join(given),
    )


def count_round_trips(
    db: stack.Database, server: stack.Server, tenant: stack.Tenant
) -> dict[str, float]:
    """Messages one app sends to PostgreSQL per warm request of ``tenant``, by request.

    ``log_statement = all`` is set server-wide (a reload reaches open connections too) only
    while the counted requests run, one at a time on one keep-alive connection (so one
    worker) after a few uncounted ones: nothing else talks to the server meanwhile, so
    every statement logged is theirs.
    """
    requests = 20
    out = {}
    for label, method, path in ROUND_TRIP_REQUESTS:
        offset = 0

        def mark() -> None:
            nonlocal offset
            _log_statements(db, "all")
            time.sleep(0.5)  # the reload reaches every backend, the log catches up
            offset = db.cluster.log_path.stat().st_size

        try:
            load.requests_on_one_connection(
                server.url, tenant, method, path, requests, warm=3, after_warm=mark
            )
            time.sleep(0.5)
            end = db.cluster.log_path.stat().st_size
        finally:
            _log_statements(db, None)
        with db.cluster.log_path.open(errors="replace") as handle:
            handle.seek(offset)
            logged = handle.read(end - offset)
        out[label] = logged.count(" statement: ") / requests
    return out


def _log_statements(db: stack.Database, value: str | None) -> None:
    with db.superuser() as cursor:
        if value is None:
            cursor.execute("ALTER SYSTEM RESET log_statement")
        else:
            cursor.execute("ALTER SYSTEM SET log_statement = %s", (value,))
        cursor.execute("SELECT pg_reload_conf()")


def warm_up_seconds(scenario: Scenario) -> float:
    """Load before a scenario's first round: longer with more tenants to log in.

    The rounds measure the steady state; what a tenant's first request costs is measured
    apart (cold tenants).
    """
    return max(3.0, scenario.tenants / 100)


@dataclass
class Bench:
    """A run in progress: the cluster, the options, the figures measured so far."""

    db: stack.Database
    args: argparse.Namespace
    figures: Figures
    tenants: list[stack.Tenant]
    tenant_files: dict[int, Path]
    newest_user: str
    baseline_password: str
    defaults: Settings

    @property
    def baseline_env(self) -> dict[str, str]:
        """The baseline's environment: the service's gunicorn settings, its own database."""
        return {
            "BASELINE_DATABASE_URL": baseline_url(self.db, self.baseline_password),
            "APP_WORKERS": str(self.defaults.workers),
            "APP_THREADS": str(self.defaults.threads),
        }

    def measure_cluster(self, cluster: int, ways: list[str], scenarios: list[Scenario]) -> None:
        """Every way on this cluster, each against the baseline on every scenario."""
        first_cluster = not self.figures.deployments
        name = f"baseline-{cluster}"
        with stack.Server(name, BASELINE_ARGS, self.baseline_env, WORK / f"{name}.log") as baseline:
            warmed: set[str] = set()
            for way in ways:
                env = service_env(self.db, cluster, way, len(self.tenants))
                serving = deployment(self.db, cluster, way, env)
                self.figures.deployments.append(serving)
                say(
                    f"max_connections {cluster}, {way}: {serving.settings or 'defaults'}, "
                    f"bound {serving.bound} connections"
                )
                name = f"service-{cluster}-{way}"
                with stack.Server(name, SERVICE_ARGS, env, WORK / f"{name}.log") as service:
                    self.figures.same_rows = rows.check_same_rows(
                        service.url, baseline.url, rows.sample(self.tenants), LIST_PATH
                    )
                    say(f"same rows: {self.figures.same_rows} tenants answered alike")
                    if first_cluster:
                        self.count_round_trips(way, service, baseline)
                    for scenario in scenarios:
                        self.measure_cell(
                            scenario, serving, service, baseline, scenario.key not in warmed
                        )
                        warmed.add(scenario.key)
                    if cluster == STOCK and way == "shared":
                        self.measure_apart(serving, service)

    def count_round_trips(self, way: str, service: stack.Server, baseline: stack.Server) -> None:
        counted = {"baseline": baseline} if not self.figures.round_trips else {}
        if way != "mix":  # mix serves a tenant one way or the other
            counted[way] = service
        for label, server in counted.items():
            for request, count in count_round_trips(self.db, server, self.tenants[0]).items():
                self.figures.round_trips.setdefault(request, {})[label] = count
        say(f"round trips per request: {self.figures.round_trips}")

    def measure_cell(
        self,
        scenario: Scenario,
        serving: Deployment,
        service: stack.Server,
        baseline: stack.Server,
        warm_baseline: bool,
    ) -> None:
        """A scenario, round after round, each round running service then baseline."""
        apps = (("service", service, "tp"), ("baseline", baseline, "baseline"))
        for round_number in range(1, self.args.rounds + 1):
            for app, server, backends in apps:
                if round_number == 1 and (app == "service" or warm_baseline):
                    self.wrk(scenario, server, warm_up_seconds(scenario))
                with load.ConnectionSampler(self.db.cluster.superuser_url()) as sampler:
                    result = self.wrk(scenario, server, self.args.seconds)
                run = _run(scenario, serving, app, round_number, result, sampler.peak[backends])
                self.figures.runs.append(run)
                say(
                    f"{serving.cluster} {serving.way} {scenario.key} round {round_number} "
                    f"{app}: {run.rps:.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 "
                    f"{run.p99_ms:.1f} ms, {run.errors} errors, {run.peak_connections} "
                    "connections"
                )
        if scenario.method == "POST":
            stack.remove_users_after(self.db, self.newest_user, (stack.DATABASE, BASELINE_DATABASE))

    def measure_apart(self, shared: Deployment, service: stack.Server) -> None:
        """The shared way's profile and the cost of its verifier, on the APART scenario."""
        scenario = next(s for s in SCENARIOS if s.key == APART)
        if scenario.tenants not in self.tenant_files:
            say(f"no profile, no verifier runs: {APART} needs more tenants")
            return
        self.wrk(scenario, service, warm_up_seconds(scenario))
        if self.args.profile_seconds:
            pids = service.worker_pids()
            say(f"profiling {len(pids)} workers with py-spy for {self.args.profile_seconds:g} s")
            self.figures.profile = profile.record(
                pids,
                self.args.profile_seconds,
                WORK / "profile",
                lambda: self.wrk(scenario, service, self.args.profile_seconds),
            )
            found = self.figures.profile
            say(f"profile: {found.samples} request samples; {found.note or 'all workers'}")
            for area, share in found.areas.items():
                say(f"  {area}: {share:.1%}")
        if self.args.verifier_rounds:
            self.measure_verifier(scenario, shared, service)
        if self.args.tracing_rounds:
            self.measure_tracing(scenario, shared, service)

    def measure_verifier(
        self, scenario: Scenario, shared: Deployment, service: stack.Server
    ) -> None:
        """Runs with the policy's third term and without it, interleaved; restored after."""
        owner = psycopg2.connect(self.db.owner_url, connect_timeout=10)
        owner.autocommit = True
        try:
            for round_number in range(1, self.args.verifier_rounds + 1):
                order = ("with", "without") if round_number % 2 else ("without", "with")
                for policy in order:
                    _set_policy(
                        owner, POLICY_PREDICATE if policy == "with" else UNVERIFIED_PREDICATE
                    )
                    result = self.wrk(scenario, service, self.args.seconds)
                    run = _run(scenario, shared, policy, round_number, result)
                    self.figures.verifier_runs.append(run)
                    say(f"verifier round {round_number} {policy}: {run.rps:.0f} req/s")
        finally:
            _set_policy(owner, POLICY_PREDICATE)
            owner.close()
        say(f"the verifier costs {report.verifier_cost(self.figures):.1%}")

    def measure_tracing(
        self, scenario: Scenario, shared: Deployment, service: stack.Server
    ) -> None:
        """``service`` (tracing off) against the same with OTLP tracing on, interleaved."""
        sink = OtlpSink()
        env = service_env(self.db, shared.cluster, shared.way, len(self.tenants))
        traced_env = {**env, "APP_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}
        try:
            with stack.Server(
                "service-traced", SERVICE_ARGS, traced_env, WORK / "service-traced.log"
            ) as traced:
                self.wrk(scenario, traced, warm_up_seconds(scenario))
                servers = {"off": service, "on": traced}
                for round_number in range(1, self.args.tracing_rounds + 1):
                    for mode in ("on", "off") if round_number % 2 else ("off", "on"):
                        result = self.wrk(scenario, servers[mode], self.args.seconds)
                        run = _run(scenario, shared, mode, round_number, result)
                        self.figures.tracing_runs.append(run)
                        say(f"tracing round {round_number} {mode}: {run.rps:.0f} req/s")
        finally:
            sink.close()
        self.figures.tracing_exports = sink.exports
        cost = report.tracing_cost(self.figures)
        say(f"tracing on costs {cost:.1%} ({sink.exports} OTLP exports received)")

    def measure_replicas(self, cluster: int) -> None:
        """Reads through a read replica against reads on the primary, and a token's cost."""
        scenario = next(s for s in SCENARIOS if s.key == APART)
        if scenario.tenants not in self.tenant_files:
            say(f"no replica runs: {APART} needs more tenants")
            return
        way = self.figures.default_way
        env = service_env(self.db, cluster, way, len(self.tenants))
        serving = deployment(self.db, cluster, way, env)
        self.figures.replica_runs = replicas.measure(
            self.db,
            env,
            scenario,
            self.tenant_files[scenario.tenants],
            self.tenants[0],
            rounds=self.args.replica_rounds,
            run_wrk=self.wrk_at,
            make_run=lambda app, number, result: _run(scenario, serving, app, number, result),
            work=WORK,
            say=say,
        )
        stack.remove_users_after(self.db, self.newest_user, (stack.DATABASE, BASELINE_DATABASE))
        ratio, cost = report.replica_ratio(self.figures), report.token_cost(self.figures)
        say(f"reads through a replica: {ratio:.2f}x the primary's; a token costs {cost:.1%}")

    def wrk(self, scenario: Scenario, server: stack.Server, seconds: float) -> load.WrkResult:
        return self.wrk_at(scenario, server.url, seconds)

    def wrk_at(
        self, scenario: Scenario, url: str, seconds: float | None, token: str = ""
    ) -> load.WrkResult:
        """One wrk run of ``scenario`` at ``url`` (``seconds`` None: the run length)."""
        return load.run_wrk(
            url,
            self.tenant_files[scenario.tenants],
            distribution=scenario.distribution,
            method=scenario.method,
            path=scenario.path,
            seconds=self.args.seconds if seconds is None else seconds,
            connections=self.args.connections,
            threads=self.args.wrk_threads,
            token=token,
        )


def _run(
    scenario: Scenario,
    serving: Deployment,
    app: str,
    round_number: int,
    result: load.WrkResult,
    peak_connections: int = 0,
) -> Run:
    return Run(
        scenario=scenario.key,
        cluster=serving.cluster,
        way=serving.way,
        app=app,
        round=round_number,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        requests=result.requests,
        peak_connections=peak_connections,
    )


def _set_policy(owner: psycopg2.extensions.connection, predicate: str) -> None:
    # The predicates are the migration's constants, not input.
    with owner.cursor() as cursor:
        cursor.execute(
            f"ALTER POLICY {POLICY_NAME} ON users USING ({predicate}) WITH CHECK ({predicate})"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=7, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to seed")
    parser.add_argument("--cold", type=int, default=300, help="tenants in the cold-start test")
    parser.add_argument(
        "--scenarios", default=",".join(s.key for s in SCENARIOS), help="comma-separated keys"
    )
    parser.add_argument(
        "--ways", type=_ways, default=list(WAYS), help="comma-separated APP_SERVING values"
    )
    parser.add_argument(
        "--clusters",
        type=_clusters,
        default=list(CLUSTERS),
        help=f"comma-separated max_connections; the service is at its defaults on {STOCK}, "
        "sized on any other",
    )
    parser.add_argument(
        "--verifier-rounds", type=int, default=9, help="with/without pairs (0: none)"
    )
    parser.add_argument(
        "--tracing-rounds", type=int, default=3, help="tracing on/off pairs (0: none)"
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=10, help="py-spy run length (0: none)"
    )
    parser.add_argument(
        "--replica-rounds",
        type=int,
        default=3,
        help="rounds of reads on a read replica, the primary, the replica with a token (0: none)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="FIGURES",
        help=f"measure nothing: write docs/ from a saved run (each run saves {FIGURES_FILE}; "
        f"a --no-write run {UNWRITTEN_FIGURES_FILE.name} beside it)",
    )
    return parser


def _ways(raw: str) -> list[str]:
    chosen = [way for way in raw.split(",") if way]
    if not chosen or not set(chosen) <= set(WAYS):
        raise argparse.ArgumentTypeError(f"pick from {', '.join(WAYS)}, not {raw!r}")
    return chosen


def _clusters(raw: str) -> list[int]:
    chosen = [item for item in raw.split(",") if item]
    if not chosen or not all(item.isdigit() and int(item) >= STOCK for item in chosen):
        raise argparse.ArgumentTypeError(f"max_connections of {STOCK} or more, not {raw!r}")
    return [int(item) for item in chosen]


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(args_given)
    if args.render is not None:
        _write(report.load(args.render), args.no_write)
        return 0
    wanted = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.key in wanted and s.tenants <= args.tenants]
    ways, clusters = args.ways, args.clusters
    load.wrk_path()  # fail now, not after seeding
    WORK.mkdir(parents=True, exist_ok=True)
    figures = Figures(
        scenarios=scenarios,
        command=" ".join(["make bench (python -m tests.bench.run", *map(shlex.quote, args_given)])
        + ")",
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    figures.machine = machine()
    load_at_start = os.getloadavg()[0]
    say(f"starting a PostgreSQL cluster (max_connections {clusters[0]}), applying migrations")
    with stack.database(clusters[0]) as db:
        defaults = load_settings(db.env)
        figures.default_way = defaults.serving
        figures.machine["PostgreSQL"] = _server_version(db)
        say(f"seeding {args.tenants} tenants x {USERS_PER_TENANT} users with flask seed-tenants")
        tenants, figures.seed_seconds = stack.seed(
            db.env, WORK / "tenants.json", count=args.tenants, users=USERS_PER_TENANT
        )
        figures.seed_tenants, figures.seed_users = len(tenants), USERS_PER_TENANT
        newest = stack.newest_user(db)
        say(f"seeded in {figures.seed_seconds:.1f} s")
        users = _cold_and_rows(db, clusters[0], tenants, args, figures)
        say(f"copying {sum(map(len, users.values()))} user rows into the baseline database")
        baseline_password = setup_baseline(db, users)
        tenant_files = {}
        for count in sorted({s.tenants for s in SCENARIOS if s.tenants <= len(tenants)}):
            tenant_files[count] = WORK / f"tenants-{count}.lua"
            tenant_files[count].write_text(load.lua_tenants(tenants[:count]))
        say("measuring connect time at SCRAM iterations 4096 and 64")
        figures.connect_ms = scram_connect_times(db, rounds=60)
        figures.settings = _settings_text(defaults, clusters, len(tenants), args)
        bench = Bench(db, args, figures, tenants, tenant_files, newest, baseline_password, defaults)
        for number, cluster in enumerate(clusters):
            if number:
                say(f"restarting PostgreSQL with max_connections {cluster}")
                bench.db = stack.restart(bench.db, cluster)
            bench.measure_cluster(cluster, ways, scenarios)
        if args.replica_rounds:
            bench.measure_replicas(clusters[-1])
    # Other work on the machine shows here first: it widens the spread of the rounds.
    figures.machine["load average"] = (
        f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (1 minute)"
    )
    saved = UNWRITTEN_FIGURES_FILE if args.no_write else FIGURES_FILE
    report.save(figures, saved)
    say(f"saved the figures to {saved}")
    _write(figures, args.no_write)
    return 0


def _cold_and_rows(
    db: stack.Database,
    cluster: int,
    tenants: list[stack.Tenant],
    args: argparse.Namespace,
    figures: Figures,
) -> dict[str, list[dict[str, object]]]:
    """On a fresh service in the default way: the cold first requests, then every row."""
    env = service_env(db, cluster, figures.default_way, len(tenants))
    with stack.Server("service", SERVICE_ARGS, env, WORK / "service-cold.log") as service:
        if args.cold:
            cold = tenants[: args.cold]
            say(f"cold tenants: first request of {len(cold)} tenants after a fresh start")
            figures.cold_ms = load.first_requests(service.url, cold, LIST_PATH)
            say(
                f"cold p50 {report.percentile(figures.cold_ms, 0.5):.1f} ms, "
                f"p99 {report.percentile(figures.cold_ms, 0.99):.1f} ms"
            )
        say(f"reading the users of {len(tenants)} tenants through the service's API")
        return rows.read_users(service.url, tenants)


def _settings_text(
    defaults: Settings, clusters: list[int], tenants: int, args: argparse.Namespace
) -> dict[str, str]:
    share = (
        f"(max_connections - {SUPERUSER_RESERVED} reserved - {BESIDE_THE_SERVICE} for the "
        f"baseline and tools) / workers - {CONTROL_POOL_MAX + LISTENER_CONNECTIONS} "
        "control-plane and listener - APP_GATEWAY_POOL_SIZE unless dedicated"
    )
    return {
        "gunicorn": f"{defaults.workers} workers x {defaults.threads} threads, both apps: the "
        "service's defaults on this machine (gthread; the service's with its fair dispatch, "
        "app/fair_dispatch.py)",
        "wrk": f"{args.wrk_threads} threads, {args.connections} connections, "
        f"{args.seconds:g} s per run, {args.rounds} rounds, after a warm-up of "
        "max(3 s, tenants / 100 s) per app and scenario",
        "data": f"{tenants} tenants x {USERS_PER_TENANT} users, the same rows in both "
        "databases; page_size=20; the rows a POST scenario adds are deleted from both after it",
        "PostgreSQL": "max_connections "
        + " then ".join(map(str, clusters))
        + " (one cluster, restarted between), "
        + ", ".join(f"{k}={v}" for k, v in stack.SERVER_SETTINGS.items()),
        "service": f"APP_ENV=production and APP_SERVING per way; at max_connections {STOCK} "
        "every other APP_* at its default; on another cluster sized as docs/operations.md "
        f"says: APP_CONNECTION_BUDGET = {share}, APP_MAX_ENGINES = max(tenants, 200)",
        "baseline": "one engine of APP_THREADS connections per worker, the same gunicorn settings",
    }


def _server_version(db: stack.Database) -> str:
    with db.superuser() as cursor:
        cursor.execute("SHOW server_version")
        (version,) = cursor.fetchone()
    return str(version)


def _write(figures: Figures, dry_run: bool) -> None:
    if dry_run:
        print(report.render_markdown(figures))
    else:
        directory = DOCS / "benchmarks"
        plots = report.plot(figures, directory)
        for stale in set(directory.glob("*.png")) - set(plots):
            stale.unlink()
        markdown = report.render_markdown(figures, [str(p.relative_to(DOCS)) for p in plots])
        (DOCS / "benchmarks.md").write_text(markdown)
        say(f"wrote {DOCS / 'benchmarks.md'} and {len(plots)} plots")
    for target, measured, met in report.targets(figures):
        say(f"target {'met    ' if met else 'NOT MET'} {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
