"""Turning measured figures into docs/benchmarks.md and its plots; nothing typed by hand."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    method: str
    path: str
    tenants: int
    distribution: str  # uniform | zipf


@dataclass(frozen=True)
class Setup:
    """How the apps were deployed for a set of runs: the service and its own baseline.

    Each setup's runs are interleaved service / baseline, and its ratios divide by the
    baseline runs of the same setup only.
    """

    key: str
    title: str
    description: str

    @property
    def service(self) -> str:
        return f"service{self.key}"

    @property
    def baseline(self) -> str:
        return f"baseline{self.key}"


SHARED = Setup(
    "",
    "One gunicorn, sized budget",
    "one gunicorn with 4 workers for each app; the kernel hands each keep-alive connection "
    "to any worker, so every worker serves every tenant. The service's connection budget "
    "and engine bound are sized for the bench cluster as "
    "[operations](operations.md#many-active-tenants) says.",
)
DEFAULTS = Setup(
    " (defaults)",
    "One gunicorn, every setting at its default",
    "the same, with every `APP_*` setting of the service at its default (a budget of "
    "`APP_THREADS` + 2 connections per worker).",
)
AFFINE = Setup(
    " (tenant-affine)",
    "Tenant-affine: HAProxy over 4 single-worker gunicorns",
    "four gunicorns of one worker each per app, behind HAProxy balancing on a consistent "
    "hash of `X-Tenant-ID` (`balance hdr(X-Tenant-ID)`, `hash-type consistent`), so each "
    "tenant is served by one worker and needs connections in that worker only. Same "
    "sized settings; the baseline goes through the same proxy.",
)
SETUPS = (SHARED, DEFAULTS, AFFINE)


@dataclass(frozen=True)
class Run:
    """One wrk run against one target (a setup's ``service`` or ``baseline``)."""

    scenario: str
    target: str
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
    runs: list[Run] = field(default_factory=list)
    cold_ms: list[float] = field(default_factory=list)
    connect_ms: dict[int, float] = field(default_factory=dict)  # SCRAM iterations -> median ms
    seed_seconds: float = 0.0
    seed_tenants: int = 0
    seed_users: int = 0
    # request -> (service, baseline) messages sent to PostgreSQL per warm request
    round_trips: dict[str, tuple[float, float]] = field(default_factory=dict)
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
    data["runs"] = [Run(**item) for item in data["runs"]]
    data["connect_ms"] = {int(k): v for k, v in data["connect_ms"].items()}
    data["round_trips"] = {k: (v[0], v[1]) for k, v in data["round_trips"].items()}
    return Figures(**data)


@dataclass(frozen=True)
class Summary:
    """A setup's service and baseline over the rounds of one scenario (means of the rounds)."""

    scenario: Scenario
    setup: Setup
    service: Run
    baseline: Run

    @property
    def ratio(self) -> float:
        return self.service.rps / self.baseline.rps if self.baseline.rps else 0.0

    @property
    def p99_ratio(self) -> float:
        return self.service.p99_ms / self.baseline.p99_ms if self.baseline.p99_ms else 0.0


def _mean_run(runs: Sequence[Run]) -> Run:
    first = runs[0]
    return Run(
        scenario=first.scenario,
        target=first.target,
        round=0,
        rps=statistics.fmean(r.rps for r in runs),
        p50_ms=statistics.fmean(r.p50_ms for r in runs),
        p99_ms=statistics.fmean(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        requests=sum(r.requests for r in runs),
        peak_connections=max(r.peak_connections for r in runs),
    )


def summarise(figures: Figures, setup: Setup = SHARED) -> list[Summary]:
    """One summary per scenario that ran both targets of ``setup``, in scenario order."""
    out = []
    for scenario in figures.scenarios:
        runs = [r for r in figures.runs if r.scenario == scenario.key]
        service = [r for r in runs if r.target == setup.service]
        baseline = [r for r in runs if r.target == setup.baseline]
        if service and baseline:
            out.append(Summary(scenario, setup, _mean_run(service), _mean_run(baseline)))
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(fraction * len(ordered))) - 1)]


def targets(figures: Figures) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the targets of issue 5, per setup that ran the scenario.

    The defaults setup is there to show what sizing buys, not to be judged.
    """
    out: list[tuple[str, str, bool]] = []
    errors = 0
    for setup in SETUPS:
        summaries = {s.scenario.key: s for s in summarise(figures, setup)}
        errors += sum(s.service.errors + s.baseline.errors for s in summaries.values())
        if setup is DEFAULTS:
            continue
        label = setup.title
        for key, floor in (("users_100", 0.80), ("users_1000_zipf", 0.70)):
            if key in summaries:
                s = summaries[key]
                out.append(
                    (
                        f"{label}: {s.scenario.title}: >= {floor:.2f}x baseline req/s",
                        f"{s.ratio:.2f}x",
                        s.ratio >= floor,
                    )
                )
        for s in summaries.values():
            if s.scenario.method == "GET":
                out.append(
                    (
                        f"{label}: {s.scenario.title}: p99 <= 2x baseline",
                        f"{s.p99_ratio:.2f}x",
                        s.p99_ratio <= 2,
                    )
                )
    out.append(("0 errors in every scenario (503 included)", str(errors), errors == 0))
    if figures.cold_ms:
        p50 = percentile(figures.cold_ms, 0.5)
        out.append(("cold tenant first request p50 <= 25 ms", f"{p50:.1f} ms", p50 <= 25))
    return out


def render_markdown(figures: Figures, plots: Sequence[str] = ()) -> str:
    """The whole of docs/benchmarks.md."""
    parts = [
        "# Benchmarks",
        "",
        f"Written by `{figures.command}` on {figures.date}; no figure on this page is typed by "
        "hand. The service and a bare baseline app (`tests/bench/baseline_app.py`: one pool, "
        "one role, the same query and JSON shape, no tenancy) run under the same gunicorn "
        "settings on the same PostgreSQL cluster, interleaved service / baseline / service / "
        "baseline, so machine noise hits both alike: read the ratios, not the absolute numbers.",
        "",
        "## Machine",
        "",
        _table(["what", "value"], [[k, v] for k, v in figures.machine.items()]),
        "",
        "## Settings",
        "",
        _table(["what", "value"], [[k, v] for k, v in figures.settings.items()]),
        "",
        "## Throughput and latency",
        "",
        "Means over the rounds; errors are socket errors plus HTTP statuses >= 400 (a 503 "
        "counts). Connections: the peak number of server backends of the app, sampled from "
        "`pg_stat_activity` every 100 ms during the runs. Each setup is compared with the "
        "baseline runs interleaved with it.",
        "",
    ]
    for setup in SETUPS:
        summaries = summarise(figures, setup)
        if not summaries:
            continue
        parts += [
            f"### {setup.title}",
            "",
            setup.description[0].upper() + setup.description[1:],
            "",
            _table(
                [
                    "scenario",
                    "service req/s",
                    "baseline req/s",
                    "ratio",
                    "service p50 / p99 ms",
                    "baseline p50 / p99 ms",
                    "errors (service / baseline)",
                    "peak connections (service / baseline)",
                ],
                [
                    [
                        s.scenario.title,
                        f"{s.service.rps:.0f}",
                        f"{s.baseline.rps:.0f}",
                        f"{s.ratio:.2f}",
                        f"{s.service.p50_ms:.1f} / {s.service.p99_ms:.1f}",
                        f"{s.baseline.p50_ms:.1f} / {s.baseline.p99_ms:.1f}",
                        f"{s.service.errors} / {s.baseline.errors}",
                        f"{s.service.peak_connections} / {s.baseline.peak_connections}",
                    ]
                    for s in summaries
                ],
            ),
            "",
        ]
    parts += [
        "Every run:",
        "",
        _table(
            ["scenario", "round", "target", "req/s", "p50 ms", "p99 ms", "errors", "connections"],
            [
                [
                    r.scenario,
                    str(r.round),
                    r.target,
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
    if figures.cold_ms:
        parts += [
            "## Cold tenants",
            "",
            f"First request of each of {len(figures.cold_ms)} tenants right after a fresh "
            "service start, one client, one keep-alive connection (so one worker): the request "
            "authenticates through the control plane, decrypts the tenant's credentials, "
            "creates its engine and connects as its role.",
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
    if figures.connect_ms:
        low, high = min(figures.connect_ms), max(figures.connect_ms)
        ratio = figures.connect_ms[high] / figures.connect_ms[low] if figures.connect_ms[low] else 0
        parts += [
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
    if figures.round_trips:
        parts += [
            "## Round trips per request",
            "",
            "Messages each app's connection sends to PostgreSQL per warm request, counted with "
            "`log_statement = all` on one tenant role and on the baseline's role. The service "
            "sends a read as one message (tenant setting, read-only mode and the query: one "
            "implicit transaction) and checks a pooled connection without a ping; the "
            "baseline is plain SQLAlchemy with `pool_pre_ping`, whose psycopg2 connection "
            "sends `BEGIN` on its own and `ROLLBACK` when the connection goes back to the pool.",
            "",
            _table(
                ["request", "service", "baseline"],
                [[k, f"{v[0]:g}", f"{v[1]:g}"] for k, v in figures.round_trips.items()],
            ),
            "",
        ]
    if figures.seed_tenants:
        parts += [
            "## Seeding",
            "",
            f"`flask seed-tenants --count {figures.seed_tenants} --users-per-tenant "
            f"{figures.seed_users}` on a fresh database: {figures.seed_seconds:.1f} s.",
            "",
        ]
    parts += [
        "## Targets",
        "",
        _table(
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets(figures)],
        ),
        "",
    ]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def plot(figures: Figures, directory: Path) -> list[Path]:
    """Req/s, p99 and peak connections against tenant count, per setup.

    Each setup's service is a solid line and the baseline runs interleaved with it a dashed
    line of the same colour (setups differ in what stands in front of the apps, so each is
    read against its own baseline); Zipf scenarios are crosses.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    if not summarise(figures):
        return []
    directory.mkdir(parents=True, exist_ok=True)
    charts = [
        ("throughput", "requests per second", lambda run: run.rps),
        ("p99", "p99 latency (ms)", lambda run: run.p99_ms),
        ("connections", "peak server connections", lambda run: run.peak_connections),
    ]
    written = []
    for name, ylabel, value in charts:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for colour, setup in zip(("C0", "C1", "C2"), SETUPS, strict=True):
            summaries = [s for s in summarise(figures, setup) if s.scenario.method == "GET"]
            for which, style, target in (
                ("service", "-", setup.service),
                ("baseline", "--", setup.baseline),
            ):
                uniform = [s for s in summaries if s.scenario.distribution == "uniform"]
                if uniform:
                    axes.plot(
                        [s.scenario.tenants for s in uniform],
                        [value(getattr(s, which)) for s in uniform],
                        style,
                        color=colour,
                        marker="o",
                        label=target,
                    )
                zipf = [s for s in summaries if s.scenario.distribution == "zipf"]
                if zipf:
                    axes.scatter(
                        [s.scenario.tenants for s in zipf],
                        [value(getattr(s, which)) for s in zipf],
                        color=colour,
                        marker="x" if which == "service" else "+",
                        label=f"{target}, Zipf(1.1)",
                    )
        axes.set_xscale("log")
        axes.set_xlabel("tenants (GET /v1/users, page_size=20)")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="x-small", ncol=2)
        figure.tight_layout()
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
