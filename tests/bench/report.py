"""Turning measured figures into docs/benchmarks.md and its plots; nothing typed by hand.

A cell is one scenario served one way on one cluster: the service's runs and the baseline
runs interleaved with them, round after round. Its ratio divides by those baseline runs
only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.capacity import LISTENER_CONNECTIONS
from app.db import CONTROL_POOL_MAX
from tests.bench.profile import Profile, ProfileItem

if TYPE_CHECKING:
    from matplotlib.axes import Axes

STOCK = 100
"""PostgreSQL's default ``max_connections``: the headline cluster, the service at its defaults."""
WAYS = ("dedicated", "shared", "mix")
WAY_TEXT = {
    "dedicated": "one engine per tenant, logging in as the tenant's role",
    "shared": "a per-worker pool of gateway connections (`APP_GATEWAY_POOL_SIZE`); every "
    "statement opens with the signed tenant context the policy verifies",
    "mix": "the hottest tenants of the last second dedicated (`APP_CONNECTION_BUDGET // "
    "APP_TENANT_POOL_SIZE` per worker), the others shared",
}
COLD_TEXT = {
    "dedicated": "decrypts the tenant's credentials, creates its engine and logs in as its role",
    "shared": "is served on a gateway connection, with no login",
    "mix": "is served shared (a tenant gets its own engine only once it is hot), with no login",
}
HEADLINE_FLOORS = {"users_1": 0.90, "users_100": 0.85, "users_1000_zipf": 0.80}
"""Least service/baseline req/s of the best way at ``STOCK``, per scenario."""
VERIFIER_MAX_COST = 0.05
COLD_P50_MAX_MS = 25.0
DONE = {
    "database": "one round trip per GET; the tenant context travels in the same message",
    "authentication": "tenant records cached per worker (`APP_TENANT_CACHE_TTL`): a warm "
    "request hashes its key and queries nothing",
    "serialisation": "responses and log lines through orjson; a page's rows dumped by "
    "position, their UUIDs and datetimes left to orjson",
    "logging": "gunicorn's own access atoms no longer built; JSON via orjson",
    "query parsing": "loaded query strings cached per worker (bounded)",
    "framework (Flask, Werkzeug)": "request headers read with one environ lookup each, not "
    "`getlist`, which walks the whole environ",
}
"""What was done about each area of the profile; an area not named here: nothing yet."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    method: str
    path: str
    tenants: int
    distribution: str  # uniform | zipf


def connection_bound(way: str, *, workers: int, budget: int, gateway_pool: int) -> int:
    """The most server connections the service may hold, as docs/operations.md states it.

    workers x (budget [unless shared] + gateway pool [unless dedicated])
    + workers x (control-plane pool + listener).
    """
    tenant = budget if way != "shared" else 0
    shared = gateway_pool if way != "dedicated" else 0
    return workers * (tenant + shared) + workers * (CONTROL_POOL_MAX + LISTENER_CONNECTIONS)


@dataclass(frozen=True)
class Deployment:
    """The service as it ran on one cluster in one way."""

    cluster: int  # the server's max_connections
    way: str
    workers: int
    threads: int
    budget: int
    gateway_pool: int
    settings: str  # the APP_* given beyond the required ones and APP_SERVING

    @property
    def bound(self) -> int:
        return connection_bound(
            self.way, workers=self.workers, budget=self.budget, gateway_pool=self.gateway_pool
        )


@dataclass(frozen=True)
class Run:
    """One wrk run against one app; a baseline run names the way it was interleaved with."""

    scenario: str
    cluster: int
    way: str
    app: str  # service | baseline; with | without for the verifier's; on | off for tracing's
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    peak_connections: int


@dataclass
class Figures:
    """Everything a report shows, as measured."""

    scenarios: Sequence[Scenario]
    deployments: list[Deployment] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    verifier_runs: list[Run] = field(default_factory=list)
    tracing_runs: list[Run] = field(default_factory=list)
    tracing_exports: int = 0  # OTLP requests the local collector received during them
    # Read replicas: app primary | replica | replica+token (tests/bench/replicas.py).
    replica_runs: list[Run] = field(default_factory=list)
    profile: Profile | None = None
    default_way: str = ""
    same_rows: int = 0  # tenants whose page every service answered as the baseline did
    cold_ms: list[float] = field(default_factory=list)
    connect_ms: dict[int, float] = field(default_factory=dict)  # SCRAM iterations -> median ms
    seed_seconds: float = 0.0
    seed_tenants: int = 0
    seed_users: int = 0
    # request -> app (a way, or baseline) -> messages sent to PostgreSQL per warm request
    round_trips: dict[str, dict[str, float]] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    command: str = "make bench"
    date: str = ""


def save(figures: Figures, path: Path) -> None:
    """Write everything measured to ``path`` (JSON), so the page can be rendered again."""
    path.write_text(json.dumps(dataclasses.asdict(figures), indent=1))


def load(path: Path) -> Figures:
    """The figures :func:`save` wrote."""
    data = json.loads(path.read_text())
    data["scenarios"] = [Scenario(**item) for item in data["scenarios"]]
    data["deployments"] = [Deployment(**item) for item in data["deployments"]]
    data["runs"] = [Run(**item) for item in data["runs"]]
    data["verifier_runs"] = [Run(**item) for item in data["verifier_runs"]]
    data["tracing_runs"] = [Run(**item) for item in data.get("tracing_runs", [])]
    data["replica_runs"] = [Run(**item) for item in data.get("replica_runs", [])]
    if data["profile"] is not None:
        items = [ProfileItem(**item) for item in data["profile"].pop("items")]
        data["profile"] = Profile(**data["profile"], items=items)
    data["connect_ms"] = {int(k): v for k, v in data["connect_ms"].items()}
    return Figures(**data)


@dataclass(frozen=True)
class Cell:
    """One scenario, one way, one cluster: the means of its rounds, per app, and each round's
    ratio."""

    scenario: Scenario
    deployment: Deployment
    service: Run
    baseline: Run
    round_ratios: tuple[float, ...]  # each round's service / baseline req/s: the noise

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios, each run against the baseline's next to it: a
        round the machine disturbed (one app's run at half speed) moves it little, where the
        ratio of the means would follow that one run."""
        if self.round_ratios:
            return statistics.median(self.round_ratios)
        return self.service.rps / self.baseline.rps if self.baseline.rps else 0.0

    @property
    def errors(self) -> int:
        return self.service.errors + self.baseline.errors

    @property
    def over_bound(self) -> bool:
        return self.service.peak_connections > self.deployment.bound


def _mean_run(runs: Sequence[Run]) -> Run:
    return dataclasses.replace(
        runs[0],
        round=0,
        rps=statistics.fmean(r.rps for r in runs),
        p50_ms=statistics.fmean(r.p50_ms for r in runs),
        p99_ms=statistics.fmean(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        requests=sum(r.requests for r in runs),
        peak_connections=max(r.peak_connections for r in runs),
    )


def clusters(figures: Figures) -> list[int]:
    """The clusters measured, in the order they ran."""
    return list(dict.fromkeys(d.cluster for d in figures.deployments))


def cells(figures: Figures, cluster: int | None = None) -> list[Cell]:
    """Every cell with runs of both apps: by cluster, then scenario, then way."""
    out = []
    for each in clusters(figures) if cluster is None else [cluster]:
        deployments = [d for d in figures.deployments if d.cluster == each]
        for scenario in figures.scenarios:
            for deployment in deployments:
                runs = [
                    r
                    for r in figures.runs
                    if (r.scenario, r.cluster, r.way)
                    == (scenario.key, deployment.cluster, deployment.way)
                ]
                service = [r for r in runs if r.app == "service"]
                baseline = [r for r in runs if r.app == "baseline"]
                if service and baseline:
                    by_round = {r.round: r.rps for r in baseline}
                    ratios = tuple(
                        r.rps / by_round[r.round] for r in service if by_round.get(r.round)
                    )
                    out.append(
                        Cell(scenario, deployment, _mean_run(service), _mean_run(baseline), ratios)
                    )
    return out


def best_way(figures: Figures, cluster: int = STOCK) -> str | None:
    """The way to serve by default, judged on ``cluster``.

    First the ways without errors, then the most ``HEADLINE_FLOORS`` met, then the highest
    geometric mean of the ratios over every scenario.
    """
    by_way: dict[str, list[Cell]] = {}
    for cell in cells(figures, cluster):
        by_way.setdefault(cell.deployment.way, []).append(cell)

    def rank(way: str) -> tuple[bool, int, float]:
        group = by_way[way]
        met = sum(
            1
            for c in group
            if c.scenario.key in HEADLINE_FLOORS and c.ratio >= HEADLINE_FLOORS[c.scenario.key]
        )
        mean = statistics.geometric_mean(max(c.ratio, 1e-9) for c in group)
        return (sum(c.errors for c in group) == 0, met, mean)

    return max(by_way, key=rank) if by_way else None


def best_per_scenario(figures: Figures, cluster: int) -> dict[str, Cell]:
    """Scenario key -> its cell of the highest ratio, among those without errors if any."""
    out: dict[str, Cell] = {}
    for cell in cells(figures, cluster):
        held = out.get(cell.scenario.key)
        if held is None or (cell.errors == 0, cell.ratio) > (held.errors == 0, held.ratio):
            out[cell.scenario.key] = cell
    return out


def paired_cost(runs: Sequence[Run], costly: str, plain: str) -> float | None:
    """Throughput lost to what ``costly`` runs add: the median of the rounds' 1 - costly /
    plain, each pair run back to back (None: no complete round). As for a cell's ratio, one
    disturbed run moves the median little."""
    costs = [cost for *_, cost in round_costs(runs, costly, plain)]
    return statistics.median(costs) if costs else None


def verifier_cost(figures: Figures) -> float | None:
    """Throughput lost to the policy's third term: 1 - with / without (None: not measured)."""
    return paired_cost(figures.verifier_runs, "with", "without")


def tracing_cost(figures: Figures) -> float | None:
    """Throughput lost to tracing on (OTLP to a local collector) against off."""
    return paired_cost(figures.tracing_runs, "on", "off")


def _mean_rps(runs: Sequence[Run], app: str) -> float | None:
    found = [run.rps for run in runs if run.app == app]
    return statistics.fmean(found) if found else None


def replica_ratio(figures: Figures) -> float | None:
    """Reads through a replica over reads on the primary, in throughput (None: not measured)."""
    replica = _mean_rps(figures.replica_runs, "replica")
    primary = _mean_rps(figures.replica_runs, "primary")
    return None if not replica or not primary else replica / primary


def token_cost(figures: Figures) -> float | None:
    """Throughput lost to sending a consistency token the replica has: 1 - with / without."""
    return paired_cost(figures.replica_runs, "replica+token", "replica")


def _replicas(figures: Figures) -> list[str]:
    ratio, cost = replica_ratio(figures), token_cost(figures)
    if ratio is None or cost is None:
        return []
    runs = figures.replica_runs
    p50 = {
        app: statistics.fmean(r.p50_ms for r in runs if r.app == app)
        for app in {r.app for r in runs}
    }
    return [
        "## Read replicas",
        "",
        f"`{runs[0].scenario}` in the `{runs[0].way}` way, {max(r.round for r in runs)} rounds in "
        "rotating order, through two services: one with `APP_READ_REPLICAS` naming a "
        "streaming standby of the bench cluster (made with `pg_basebackup`), one without "
        "(every read on the primary); then the first again, every request sending an "
        "`X-Consistency-Token` the standby has replayed (the same server answers; the "
        "difference is the token's check). Both services and both PostgreSQL servers share "
        "this machine's cores, so this says what routing a read costs or saves here, not "
        "what a replica on a machine of its own adds (`tests/bench/replicas.py`).",
        "",
        "| | ratio |",
        "| --- | --- |",
        f"| reads through the replica / reads on the primary (req/s) | {ratio:.2f} |",
        f"| p50 through the replica / p50 on the primary | {p50['replica'] / p50['primary']:.2f} |",
        f"| cost of the token's check (1 - with / without, req/s) | {cost:.1%} |",
        "",
    ]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]


def targets(figures: Figures) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the targets of the shared-connections issue."""
    out: list[tuple[str, str, bool]] = []
    way = best_way(figures)
    if way is not None:
        label = f"max_connections {STOCK}, defaults, best way ({way})"
        mine = [c for c in cells(figures, STOCK) if c.deployment.way == way]
        for cell in mine:
            floor = HEADLINE_FLOORS.get(cell.scenario.key)
            if floor is not None:
                out.append(
                    (
                        f"{label}: {cell.scenario.title}: >= {floor:.2f}x baseline req/s",
                        f"{cell.ratio:.2f}x",
                        cell.ratio >= floor,
                    )
                )
        errors = sum(c.errors for c in mine)
        out.append((f"{label}: only 2xx, service and baseline", f"{errors} errors", errors == 0))
    if figures.deployments:
        over = [c for c in cells(figures) if c.over_bound]
        out.append(
            (
                "peak server connections within the stated bound, in every cell",
                f"{len(over)} cells over" if over else "all within",
                not over,
            )
        )
    cost = verifier_cost(figures)
    if cost is not None:
        out.append(
            (
                f"the verifier costs <= {VERIFIER_MAX_COST:.0%} of shared throughput",
                f"{cost:.1%}",
                cost <= VERIFIER_MAX_COST,
            )
        )
    if figures.cold_ms:
        p50 = percentile(figures.cold_ms, 0.5)
        out.append(
            (
                f"cold tenant first request p50 <= {COLD_P50_MAX_MS:g} ms",
                f"{p50:.1f} ms",
                p50 <= COLD_P50_MAX_MS,
            )
        )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cluster_title(cluster: int) -> str:
    how = "stock, the service at its defaults" if cluster == STOCK else "the service sized for it"
    return f"max_connections {cluster} ({how})"


def render_markdown(figures: Figures, plots: Sequence[str] = ()) -> str:
    """The whole of docs/benchmarks.md."""
    sections = (
        _intro,
        _headline,
        _targets,
        _machine_and_settings,
        _throughput,
        _verifier,
        _tracing,
        _replicas,
        _profile,
        _cold,
        _connect,
        _round_trips,
        _seeding,
        _every_run,
    )
    parts = [part for section in sections for part in section(figures)]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def _intro(figures: Figures) -> list[str]:
    checked = (
        f" Before any measuring, every service started had to answer `GET /v1/users?page=1&"
        f"page_size=20` of {figures.same_rows} tenants exactly as the baseline does (records "
        "and totals), or the bench stops: both databases hold the same rows, the baseline's "
        "copied through the service's API with each tenant's key."
        if figures.same_rows
        else ""
    )
    return [
        "# Benchmarks",
        "",
        f"Written by `{figures.command}` on {figures.date}; no figure on this page is typed by "
        "hand. The service and a bare baseline app (`tests/bench/baseline_app.py`: one pool, "
        "one role, the same query and JSON shape, no tenancy) run under the same gunicorn "
        "settings on the same PostgreSQL cluster, interleaved service / baseline / service / "
        "baseline, so machine noise hits both alike: read the ratios, not the absolute "
        f"numbers.{checked}",
        "",
        "The service serves tenants one of three ways (`APP_SERVING`):",
        "",
        *[f"- `{way}`: {text}." for way, text in WAY_TEXT.items()],
        "",
    ]


def _headline(figures: Figures) -> list[str]:
    parts = ["## Which way is best", ""]
    way = best_way(figures)
    if way is not None:
        parts += [
            f"At max_connections {STOCK} with every setting at its default, the best way "
            f"overall is **{way}** (first no errors, then the most headline targets met, then "
            "the highest geometric mean of the ratios over every scenario). The service's "
            f"default when this ran: `{figures.default_way}`.",
            "",
        ]
    measured = clusters(figures)
    best = {cluster: best_per_scenario(figures, cluster) for cluster in measured}
    rows = []
    for scenario in figures.scenarios:
        row = [scenario.title]
        for cluster in measured:
            cell = best[cluster].get(scenario.key)
            row.append(f"{cell.deployment.way} ({cell.ratio:.2f}x)" if cell else "")
        rows.append(row)
    parts += [
        "Best way per scenario (the highest ratio to the baseline, among cells without errors):",
        "",
        _table(["scenario", *(f"max_connections {c}" for c in measured)], rows),
        "",
    ]
    return parts


def _targets(figures: Figures) -> list[str]:
    return [
        "## Targets",
        "",
        _table(
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(figures)],
        ),
        "",
    ]


def _machine_and_settings(figures: Figures) -> list[str]:
    return [
        "## Machine",
        "",
        _table(["what", "value"], [[k, v] for k, v in figures.machine.items()]),
        "",
        "## Settings",
        "",
        _table(["what", "value"], [[k, v] for k, v in figures.settings.items()]),
        "",
        "The service per cluster and way, and the bound its server connections must stay "
        "within: workers x (`APP_CONNECTION_BUDGET` unless shared + `APP_GATEWAY_POOL_SIZE` "
        f"unless dedicated) + workers x ({CONTROL_POOL_MAX} control-plane pool + "
        f"{LISTENER_CONNECTIONS} listener).",
        "",
        _table(
            ["max_connections", "way", "workers x threads", "settings", "bound"],
            [
                [
                    str(d.cluster),
                    d.way,
                    f"{d.workers} x {d.threads}",
                    d.settings or "defaults",
                    str(d.bound),
                ]
                for d in figures.deployments
            ],
        ),
        "",
    ]


def _throughput(figures: Figures) -> list[str]:
    parts = [
        "## Throughput and latency",
        "",
        "Req/s and latencies: means over the rounds. Ratio: the median of the rounds' ratios "
        "(each round's service run against the baseline run next to it; the range in "
        "brackets), so a round the machine disturbed does not decide it. Errors: socket "
        "errors, timeouts and HTTP statuses >= 400 as wrk "
        "counts them (a 503 counts), for either app. Connections: the peak number of the "
        "service's server backends (`tp:*`), sampled from `pg_stat_activity` every 100 ms "
        "during its runs, against its bound; the baseline holds at most workers x threads.",
        "",
    ]
    for cluster in clusters(figures):
        parts += [
            f"### {_cluster_title(cluster)}",
            "",
            _table(
                [
                    "scenario",
                    "way",
                    "service req/s",
                    "baseline req/s",
                    "ratio (rounds)",
                    "service p50 / p99 ms",
                    "baseline p50 / p99 ms",
                    "errors (service / baseline)",
                    "peak connections (bound)",
                ],
                [
                    [
                        c.scenario.title,
                        c.deployment.way,
                        f"{c.service.rps:.0f}",
                        f"{c.baseline.rps:.0f}",
                        f"{c.ratio:.2f} ({_spread(c.round_ratios, '{:.2f}')})",
                        f"{c.service.p50_ms:.1f} / {c.service.p99_ms:.1f}",
                        f"{c.baseline.p50_ms:.1f} / {c.baseline.p99_ms:.1f}",
                        f"{c.service.errors} / {c.baseline.errors}",
                        f"{c.service.peak_connections} ({c.deployment.bound})"
                        + (" **over**" if c.over_bound else ""),
                    ]
                    for c in cells(figures, cluster)
                ],
            ),
            "",
        ]
    over = [c for c in cells(figures) if c.over_bound]
    if figures.deployments:
        parts += [
            "Cells over the bound: "
            + (
                "; ".join(
                    f"{c.scenario.title}, {c.deployment.way}, max_connections "
                    f"{c.deployment.cluster}: {c.service.peak_connections} > {c.deployment.bound}"
                    for c in over
                )
                if over
                else "none."
            ),
            "",
        ]
    return parts


def _spread(values: Sequence[float], form: str) -> str:
    """``low-high`` of ``values`` in ``form``, or the one value."""
    if not values:
        return ""
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


def round_costs(
    runs: Sequence[Run], costly: str, plain: str
) -> list[tuple[int, str, float, float, float]]:
    """(round, which ran first, costly req/s, plain req/s, cost) of each complete round."""
    out = []
    for number in sorted({r.round for r in runs}):
        mine = [r for r in runs if r.round == number]
        rps = {r.app: r.rps for r in mine}
        if rps.get(costly) and rps.get(plain):
            cost = 1 - rps[costly] / rps[plain]
            out.append((number, mine[0].app, rps[costly], rps[plain], cost))
    return out


def _rounds_table(runs: Sequence[Run], costly: str, plain: str) -> str:
    return _table(
        ["round", "first", f"{costly} req/s", f"{plain} req/s", "cost"],
        [
            [str(n), first, f"{a:.0f}", f"{b:.0f}", f"{c:.1%}"]
            for n, first, a, b, c in round_costs(runs, costly, plain)
        ],
    )


def _cost_line(runs: Sequence[Run], costly: str, plain: str) -> str:
    rounds = round_costs(runs, costly, plain)
    cost = paired_cost(runs, costly, plain) or 0.0
    return (
        f"{cost:.1%} of the throughput (the median of the rounds' 1 - {costly} / {plain}); "
        "the rounds' costs "
        f"go from {min(c for *_, c in rounds):.1%} to {max(c for *_, c in rounds):.1%}. "
        f"Errors: {sum(r.errors for r in runs)}."
    )


def _cost_section(
    figures: Figures,
    runs: Sequence[Run],
    pair: tuple[str, str],
    heading: str,
    describe: str,
    subject: str,
) -> list[str]:
    """A paired measurement's section: which runs, a table of rounds, the mean cost."""
    costly, plain = pair
    if not round_costs(runs, costly, plain):
        return []
    first = runs[0]
    title = next((s.title for s in figures.scenarios if s.key == first.scenario), first.scenario)
    return [
        f"## {heading}",
        "",
        f"{title}, served shared, max_connections {first.cluster}: {describe}",
        "",
        _rounds_table(runs, costly, plain),
        "",
        f"{subject} costs " + _cost_line(runs, costly, plain),
        "",
    ]


def _verifier(figures: Figures) -> list[str]:
    return _cost_section(
        figures,
        figures.verifier_runs,
        ("with", "without"),
        "What the verifier costs",
        "the same service with the policy as migration 0011 made it (`with`) and with its "
        "check of the signed tenant context dropped by the owner (`ALTER POLICY ... USING "
        "(<UNVERIFIED_PREDICATE>)`, `without`, restored after), interleaved, alternating "
        "which goes first.",
        "The verifier",
    )


def _tracing(figures: Figures) -> list[str]:
    return _cost_section(
        figures,
        figures.tracing_runs,
        ("on", "off"),
        "What tracing costs",
        "the service as measured above (`APP_TRACING=off`, the default: no OpenTelemetry "
        "module is imported, no hook added, `tests/test_tracing.py`) against a second one "
        "with `APP_TRACING=otlp`, every request and statement a span, exported in batches to "
        f"a local collector that answers at once ({figures.tracing_exports} exports "
        "received), interleaved.",
        "Tracing on",
    )


def _profile(figures: Figures) -> list[str]:
    profile = figures.profile
    if profile is None:
        return []
    parts = [
        "## Where a request's CPU goes",
        "",
        "`py-spy record --gil -f raw --nonblocking -r 200` on each worker of the service "
        "during a shared GET /v1/users run at 100 tenants (max_connections "
        f"{STOCK}). With `--gil` a thread is sampled only while it holds the GIL, so waits "
        "for PostgreSQL or the client are not in it: this is the Python a request costs. "
        "Only request threads (through gunicorn's `ThreadWorker.handle`) count. Each sample "
        "is charged to the area of its innermost frame that has one, and to the function "
        "through which the request entered that area: an item is that function's inclusive "
        "time within its area; the hottest frame below it is where in the area its samples "
        "ended most often (`tests/bench/profile.py`).",
        "",
    ]
    if profile.note:
        parts += [f"Note: {profile.note}.", ""]
    if not profile.samples:
        return parts
    parts += [
        f"{profile.samples} request-thread samples of {profile.all_samples} in all.",
        "",
        _table(
            ["area", "share of request CPU", "what was done about it"],
            [[area, f"{share:.1%}", DONE.get(area, "")] for area, share in profile.areas.items()],
        ),
        "",
        "Top items:",
        "",
        _table(
            ["area", "function (entry into the area)", "share", "hottest frame below it", "share"],
            [
                [
                    i.area,
                    f"`{i.function}`",
                    f"{i.share:.1%}",
                    f"`{i.hottest}`",
                    f"{i.hottest_share:.1%}",
                ]
                for i in profile.items
            ],
        ),
        "",
    ]
    return parts


def _cold(figures: Figures) -> list[str]:
    if not figures.cold_ms:
        return []
    way = figures.default_way
    return [
        "## Cold tenants",
        "",
        f"First request of each of {len(figures.cold_ms)} tenants right after a fresh "
        f"service start, in the default way (`{way}`) at max_connections "
        f"{figures.deployments[0].cluster if figures.deployments else STOCK}, one client, one "
        "keep-alive connection (so one worker): the request authenticates through the control "
        f"plane and {COLD_TEXT.get(way, 'is served')}.",
        "",
        _table(
            ["p50 ms", "p90 ms", "p99 ms", "max ms"],
            [
                [
                    f"{percentile(figures.cold_ms, 0.5):.1f}",
                    f"{percentile(figures.cold_ms, 0.9):.1f}",
                    f"{percentile(figures.cold_ms, 0.99):.1f}",
                    f"{max(figures.cold_ms):.1f}",
                ]
            ],
        ),
        "",
    ]


def _connect(figures: Figures) -> list[str]:
    if not figures.connect_ms:
        return []
    low, high = min(figures.connect_ms), max(figures.connect_ms)
    ratio = figures.connect_ms[high] / figures.connect_ms[low] if figures.connect_ms[low] else 0
    return [
        "## Tenant connect time by SCRAM iterations",
        "",
        "Median of new connections (connect + close) as a role whose verifier has the given "
        "PBKDF2 iteration count, interleaved (see [security](security.md) for why tenants "
        "use 64).",
        "",
        _table(
            ["iterations", "median connect ms"],
            [[str(k), f"{v:.2f}"] for k, v in sorted(figures.connect_ms.items())],
        ),
        "",
        f"{high} iterations cost {ratio:.2f}x the connect time of {low}.",
        "",
    ]


def _round_trips(figures: Figures) -> list[str]:
    if not figures.round_trips:
        return []
    apps = list(dict.fromkeys(app for counts in figures.round_trips.values() for app in counts))
    return [
        "## Round trips per request",
        "",
        "Messages each app sends to PostgreSQL per warm request of one tenant, counted in the "
        "server log with `log_statement = all` (set for the count only). The service sends a "
        "read as one message: dedicated, the tenant setting, read-only mode and the query; "
        "shared, the signed tenant context and the query; it checks a pooled connection "
        "without a ping. The baseline is plain SQLAlchemy with `pool_pre_ping`, whose "
        "psycopg2 connection sends `BEGIN` on its own and `ROLLBACK` when the connection goes "
        "back to the pool. (`mix` serves a tenant one way or the other.)",
        "",
        _table(
            ["request", *apps],
            [
                [request, *(f"{counts[a]:g}" if a in counts else "" for a in apps)]
                for request, counts in figures.round_trips.items()
            ],
        ),
        "",
    ]


def _seeding(figures: Figures) -> list[str]:
    if not figures.seed_tenants:
        return []
    return [
        "## Seeding",
        "",
        f"`flask seed-tenants --count {figures.seed_tenants} --users-per-tenant "
        f"{figures.seed_users}` on a fresh database: {figures.seed_seconds:.1f} s.",
        "",
    ]


def _every_run(figures: Figures) -> list[str]:
    if not figures.runs:
        return []
    return [
        "## Every run",
        "",
        _table(
            [
                "max_connections",
                "scenario",
                "way",
                "round",
                "app",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "connections",
            ],
            [
                [
                    str(r.cluster),
                    r.scenario,
                    r.way,
                    str(r.round),
                    r.app,
                    f"{r.rps:.0f}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    str(r.errors),
                    str(r.peak_connections),
                ]
                for r in figures.runs
            ],
        ),
        "",
    ]


_COLOURS = dict(zip(WAYS, ("C0", "C1", "C2"), strict=True))
_Value = Callable[[Cell], float]


def plot(figures: Figures, directory: Path) -> list[Path]:
    """Ratio, p99 and peak connections against tenant count: one line per way, one panel
    per cluster; GET scenarios only, Zipf as crosses."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    shown = [c for c in cells(figures) if c.scenario.method == "GET"]
    if not shown:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    # name, y label, the service's value, a companion drawn dashed (or None), a reference line
    charts: list[tuple[str, str, _Value, _Value | None, float | None]] = [
        ("ratio", "service / baseline req/s", lambda c: c.ratio, None, 1.0),
        (
            "p99",
            "p99 latency (ms), baseline dashed",
            lambda c: c.service.p99_ms,
            lambda c: c.baseline.p99_ms,
            None,
        ),
        (
            "connections",
            "peak server connections, bound dashed",
            lambda c: c.service.peak_connections,
            lambda c: c.deployment.bound,
            None,
        ),
    ]
    measured = clusters(figures)
    written = []
    for name, ylabel, value, companion, reference in charts:
        figure, panels = plt.subplots(
            1, len(measured), figsize=(6 * len(measured), 4.5), squeeze=False
        )
        for axes, cluster in zip(panels[0], measured, strict=True):
            for way in WAYS:
                mine = [
                    c for c in shown if c.deployment.cluster == cluster and c.deployment.way == way
                ]
                _draw(axes, way, mine, value, companion)
            if reference is not None:
                axes.axhline(reference, color="grey", linewidth=1, linestyle=":")
            axes.set_title(_cluster_title(cluster), fontsize="small")
            axes.set_xscale("log")
            axes.set_xlabel("tenants (GET /v1/users, page_size=20)")
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize="x-small")
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _draw(axes: Axes, way: str, mine: list[Cell], value: _Value, companion: _Value | None) -> None:
    """One way's uniform cells as a line (and its companion dashed), Zipf cells as crosses."""
    colour = _COLOURS[way]
    uniform = [c for c in mine if c.scenario.distribution == "uniform"]
    zipf = [c for c in mine if c.scenario.distribution == "zipf"]
    xs = [c.scenario.tenants for c in uniform]
    if uniform:
        axes.plot(xs, [value(c) for c in uniform], "-", color=colour, marker="o", label=way)
        if companion is not None:
            axes.plot(xs, [companion(c) for c in uniform], "--", color=colour)
    if zipf:
        axes.scatter(
            [c.scenario.tenants for c in zipf],
            [value(c) for c in zipf],
            color=colour,
            marker="x",
            label=f"{way}, Zipf(1.1)",
        )
