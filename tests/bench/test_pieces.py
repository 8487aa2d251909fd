"""The pieces of ``make bench`` work (the benchmark itself is not part of ``make test``)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.capacity import demand_per_worker
from app.tenancy.control.provisioning import ProvisionedTenant
from config import load_settings
from tests.bench import baseline_app, load, profile, report, rows, run
from tests.bench.profile import Profile, ProfileItem
from tests.bench.report import Deployment, Figures, Run, Scenario
from tests.bench.stack import Tenant
from tests.support import auth_headers

WRK_OUTPUT = """Running 12s test @ http://127.0.0.1:8080
  2 threads and 32 connections
WRK_JSON {"requests": 6000, "duration_us": 12000000, "connect": 0, "read": 1, "write": 0, \
"status": 2, "timeout": 0, "p50_us": 4200, "p99_us": 31000, "max_us": 90000}
"""


def test_lua_tenants_lists_ids_and_keys() -> None:
    tenants = [Tenant(str(uuid.uuid4()), f"bench-{i}", f"tpk_key{i}") for i in range(2)]
    chunk = load.lua_tenants(tenants)
    assert chunk.startswith("return {")
    assert f'{{"{tenants[1].id}", "tpk_key1"}},' in chunk


def test_lua_tenants_refuses_characters_that_could_escape_a_string() -> None:
    with pytest.raises(ValueError, match="Lua"):
        load.lua_tenants([Tenant(str(uuid.uuid4()), "x", 'tpk_"); os.exit() --')])


def test_parse_wrk_reads_figures_and_counts_errors() -> None:
    result = load.parse_wrk(WRK_OUTPUT)
    assert result.rps == 500
    assert (result.errors, result.p50_ms, result.p99_ms) == (3, 4.2, 31.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (report.percentile(values, 0.5), report.percentile(values, 0.99)) == (50, 99)


SCENARIOS = [
    Scenario("users_1", "GET /v1/users, 1 tenant", "GET", "/v1/users", 1, "uniform"),
    Scenario("users_100", "GET /v1/users, 100 tenants", "GET", "/v1/users", 100, "uniform"),
    Scenario("users_1000_zipf", "GET /v1/users, 1000 Zipf", "GET", "/v1/users", 1000, "zipf"),
]
RATIOS = {"dedicated": (1.0, 0.2, 0.2), "shared": (0.95, 0.9, 0.85)}


def _figures() -> Figures:
    """Dedicated and shared on the stock cluster, shared on a sized one; one cell over."""
    figures = Figures(scenarios=SCENARIOS, date="2024-01-01 00:00 UTC", default_way="mix")
    figures.deployments = [
        Deployment(100, "dedicated", 4, 4, 6, 4, ""),
        Deployment(100, "shared", 4, 4, 6, 4, ""),
        Deployment(2000, "shared", 4, 4, 465, 4, "APP_CONNECTION_BUDGET=465"),
    ]
    for deployment in figures.deployments:
        for scenario, ratio in zip(SCENARIOS, RATIOS[deployment.way], strict=True):
            over = deployment.way == "dedicated" and scenario.key == "users_100"
            peak = 50 if over else 30
            for number in (1, 2):
                key, cluster, way = scenario.key, deployment.cluster, deployment.way
                figures.runs += [
                    Run(key, cluster, way, "service", number, 1000 * ratio, 5, 20, 0, 1, peak),
                    Run(key, cluster, way, "baseline", number, 1000, 4, 12, 0, 1, 16),
                ]
    figures.verifier_runs = [
        Run("users_100", 100, "shared", "with", 1, 960, 5, 20, 0, 1, 0),
        Run("users_100", 100, "shared", "without", 1, 1000, 5, 20, 0, 1, 0),
    ]
    figures.tracing_runs = [
        Run("users_100", 100, "shared", "off", 1, 1000, 5, 20, 0, 1, 0),
        Run("users_100", 100, "shared", "on", 1, 900, 5, 20, 0, 1, 0),
    ]
    figures.tracing_exports = 7
    figures.profile = Profile(
        samples=10,
        all_samples=12,
        areas={"database": 0.5, "serialisation": 0.3, "views": 0.2},
        items=[
            ProfileItem(
                "database", "Session.execute (sqlalchemy/orm/session.py)", 0.5, "do_execute", 0.4
            )
        ],
    )
    figures.cold_ms = [10.0, 12.0, 30.0]
    figures.connect_ms = {64: 2.5, 4096: 5.0}
    figures.round_trips = {"GET /v1/users": {"baseline": 4.0, "shared": 1.0}}
    return figures


def test_connection_bound_is_what_the_start_up_check_counts() -> None:
    env = {
        "APP_DATABASE_URL": "postgresql://owner:secret@db.internal/tenantpool",
        "APP_ENCRYPTION_KEYS": f"k1:{'0' * 64}",
        "APP_ENCRYPTION_ACTIVE_KEY": "k1",
        "APP_WORKERS": "4",
        "APP_THREADS": "4",
    }
    bounds = {}
    for way in report.WAYS:
        settings = load_settings({**env, "APP_SERVING": way})
        bounds[way] = report.connection_bound(
            way,
            workers=settings.workers,
            budget=settings.connection_budget,
            gateway_pool=settings.gateway_pool_size,
        )
        counted = demand_per_worker(settings, control_plane=True, gateways=1)
        assert bounds[way] == settings.workers * counted
    assert bounds == {"dedicated": 44, "shared": 36, "mix": 60}


def test_sized_settings_fill_the_cluster_beside_the_baseline() -> None:
    defaults = load_settings(
        {
            "APP_DATABASE_URL": "postgresql://owner:secret@db.internal/tenantpool",
            "APP_ENCRYPTION_KEYS": f"k1:{'0' * 64}",
            "APP_ENCRYPTION_ACTIVE_KEY": "k1",
            "APP_WORKERS": "4",
        }
    )
    usable = 2000 - run.SUPERUSER_RESERVED - run.BESIDE_THE_SERVICE
    for way in ("dedicated", "mix"):
        sized = run.sized_settings(2000, way, 1000, defaults)
        bound = report.connection_bound(
            way,
            workers=4,
            budget=int(sized["APP_CONNECTION_BUDGET"]),
            gateway_pool=defaults.gateway_pool_size,
        )
        assert usable - 4 < bound <= usable
        assert int(sized["APP_MAX_ENGINES"]) >= 1000


def test_best_way_and_targets_judge_the_stock_cluster() -> None:
    figures = _figures()
    assert report.best_way(figures) == "shared"
    met = {target: (measured, ok) for target, measured, ok in report.targets(figures)}
    label = "max_connections 100, defaults, best way (shared)"
    assert met[f"{label}: GET /v1/users, 1 tenant: >= 0.90x baseline req/s"] == ("0.95x", True)
    assert met[f"{label}: GET /v1/users, 1000 Zipf: >= 0.80x baseline req/s"] == ("0.85x", True)
    assert met[f"{label}: only 2xx, service and baseline"] == ("0 errors", True)
    bound = "peak server connections within the stated bound, in every cell"
    assert met[bound] == ("1 cells over", False)
    assert met["the verifier costs <= 5% of shared throughput"] == ("4.0%", True)


def test_best_way_puts_a_way_with_errors_last() -> None:
    figures = _figures()
    figures.runs = [
        dataclasses.replace(r, errors=3) if r.way == "shared" and r.cluster == 100 else r
        for r in figures.runs
    ]
    assert report.best_way(figures) == "dedicated"


def test_report_page_shows_cells_bounds_verifier_and_profile() -> None:
    markdown = report.render_markdown(_figures())
    assert (
        "| GET /v1/users, 100 tenants | dedicated | 200 | 1000 | 0.20 (0.20) | 5.0 / 20.0 "
        "| 4.0 / 12.0 | 0 / 0 | 50 (44) **over** |" in markdown
    )
    assert "dedicated, max_connections 100: 50 > 44" in markdown
    assert "| GET /v1/users, 1 tenant | dedicated (1.00x) | shared (0.95x) |" in markdown
    assert "| GET /v1/users, 100 tenants | shared (0.90x) | shared (0.90x) |" in markdown
    assert "| 1 | with | 960 | 1000 | 4.0% |" in markdown
    assert "The verifier costs 4.0% of the throughput" in markdown
    assert "the rounds' costs go from 4.0% to 4.0%" in markdown
    assert "| 1 | off | 900 | 1000 | 10.0% |" in markdown
    assert (
        "Tracing on costs 10.0% of the throughput (the median of the rounds' 1 - on / off)"
        in markdown
    )
    assert "(7 exports received)" in markdown
    assert f"| database | 50.0% | {report.DONE['database']} |" in markdown
    assert (
        "| database | `Session.execute (sqlalchemy/orm/session.py)` | 50.0% "
        "| `do_execute` | 40.0% |" in markdown
    )
    assert "| GET /v1/users | 4 | 1 |" in markdown
    assert "4096 iterations cost 2.00x the connect time of 64." in markdown


def test_report_ratio_shows_the_spread_of_its_rounds() -> None:
    figures = _figures()
    figures.runs = [
        dataclasses.replace(r, rps=900)
        if (r.scenario, r.cluster, r.way, r.app, r.round)
        == ("users_1", 100, "shared", "service", 2)
        else r
        for r in figures.runs
    ]
    markdown = report.render_markdown(figures)
    assert "| GET /v1/users, 1 tenant | shared | 925 | 1000 | 0.93 (0.90-0.95) |" in markdown


def test_report_ratio_is_the_median_of_its_rounds_not_moved_by_one_disturbed_run() -> None:
    """A baseline run at half speed (the machine, not the apps) makes its round's ratio twice
    as high; the cell's ratio is the median of the rounds', and the verifier's cost too."""
    figures = _figures()
    halved = ("users_1", 100, "shared", "baseline", 2)
    figures.runs = [
        dataclasses.replace(r, rps=r.rps / 2)
        if (r.scenario, r.cluster, r.way, r.app, r.round) == halved
        else r
        for r in figures.runs
    ]
    rounds = [r for r in figures.runs if (r.scenario, r.cluster, r.way) == halved[:3]]
    figures.runs += [dataclasses.replace(r, round=3) for r in rounds if r.round == 1]
    cell = next(
        c
        for c in report.cells(figures, 100)
        if (c.scenario.key, c.deployment.way) == ("users_1", "shared")
    )
    assert cell.round_ratios == (0.95, 1.9, 0.95)
    assert cell.ratio == 0.95
    figures.verifier_runs += [
        dataclasses.replace(r, round=2, rps=r.rps / 2 if r.app == "without" else r.rps)
        for r in figures.verifier_runs
    ] + [dataclasses.replace(r, round=3) for r in figures.verifier_runs]
    assert report.verifier_cost(figures) == pytest.approx(0.04)


def test_report_plots_are_written(tmp_path: Path) -> None:
    written = report.plot(_figures(), tmp_path)
    assert [p.name for p in written] == ["ratio.png", "p99.png", "connections.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_saved_figures_render_the_same_page(tmp_path: Path) -> None:
    figures = _figures()
    report.save(figures, tmp_path / "figures.json")
    again = report.load(tmp_path / "figures.json")
    assert again == figures
    assert report.render_markdown(again) == report.render_markdown(figures)


RAW_PROFILE = (
    "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:83);"
    "ThreadWorker.handle (gunicorn/workers/gthread.py:530);Flask.wsgi_app (flask/app.py:1500);"
    "_bind_tenant (/srv/tp/app/hooks.py:45);Tenancy.authenticate (/srv/tp/app/tenancy/service."
    "py:90);check_api_key (/srv/tp/app/tenancy/serving/resolve.py:74) 3\n"
    "Thread._bootstrap (threading.py:1002);ThreadWorker.handle (gunicorn/workers/gthread.py:530)"
    ";Flask.wsgi_app (flask/app.py:1500);list_users (/srv/tp/app/api/resource.py:100);"
    "Session.execute (sqlalchemy/orm/session.py:2000);Connection._execute_context "
    "(sqlalchemy/engine/base.py:1800);Lock.acquire (threading.py:10) 5\n"
    "Thread._bootstrap (threading.py:1002);ThreadWorker.handle (gunicorn/workers/gthread.py:530)"
    ";Flask.wsgi_app (flask/app.py:1500);_finish (/srv/tp/app/request_log.py:40);Logger.info "
    "(logging/__init__.py:1400);JsonFormatter.format (/srv/tp/app/logs.py:30) 2\n"
    "Thread._bootstrap (threading.py:1002);Reaper.run (/srv/tp/app/tenancy/serving/reaper.py:9) 4\n"
)


def test_profile_charges_request_samples_to_the_entry_into_their_area() -> None:
    found = profile.aggregate([RAW_PROFILE])
    assert (found.samples, found.all_samples) == (10, 14)  # the reaper is no request thread
    assert found.areas == {"database": 0.5, "authentication": 0.3, "logging": 0.2}
    assert [(i.area, i.function, i.share) for i in found.items] == [
        ("database", "Session.execute (sqlalchemy/orm/session.py)", 0.5),
        ("authentication", "Tenancy.authenticate (app/tenancy/service.py)", 0.3),
        ("logging", "_finish (app/request_log.py)", 0.2),
    ]
    assert (found.items[0].hottest, found.items[0].hottest_share) == (
        "Connection._execute_context (sqlalchemy/engine/base.py)",
        0.5,
    )


def test_profile_of_no_request_thread_says_so() -> None:
    found = profile.aggregate(["Thread._bootstrap (threading.py:1002) 7\n"])
    assert (found.samples, found.all_samples) == (0, 7)
    assert "no sample of a request thread" in found.note


def test_profile_charges_a_stack_of_no_area_to_other() -> None:
    stack = ["Thread.run (threading.py:982)", "work (spin.py:4)"]
    assert profile.charge(stack) == ("other", "work (spin.py)", "work (spin.py)")


def test_profile_tells_the_server_from_the_framework() -> None:
    server = "ThreadWorker.handle (gunicorn/workers/gthread.py:530)"
    flask = "Flask.wsgi_app (flask/app.py:1500)"
    werkzeug = "Headers.get (werkzeug/datastructures/headers.py:90)"
    assert profile.charge([server, "http_date (gunicorn/util.py:1)"])[0] == "HTTP server (gunicorn)"
    assert profile.charge([server, flask, werkzeug])[:2] == (
        "framework (Flask, Werkzeug)",
        "Flask.wsgi_app (flask/app.py)",
    )


def test_same_rows_differences_name_totals_and_records() -> None:
    page = {
        "records": [{"id": "1", "email": "a@example.com"}],
        "page": 1,
        "page_size": 20,
        "total": 1,
        "total_pages": 1,
    }
    assert rows.differences(page, dict(page)) == []
    other = {**page, "total": 2, "records": [{"id": "1", "email": "b@example.com"}]}
    found = rows.differences(page, other)
    assert found[0] == "total: service 1, baseline 2"
    assert found[1].startswith("record 0: service {'id': '1', 'email': 'a@example.com'}")


def test_same_rows_sample_is_the_first_tenant_and_a_fixed_few() -> None:
    tenants = [Tenant(str(uuid.uuid4()), f"bench-{i}", f"tpk_{i}") for i in range(50)]
    chosen = rows.sample(tenants)
    assert chosen[0] == tenants[0]
    assert len(set(chosen)) == rows.SAMPLE + 1
    assert rows.sample(tenants) == chosen


@pytest.fixture
def baseline_client(owner_url: str, migrated: None) -> FlaskClient:
    """The baseline app on its own schema of the suite's database."""
    schema = f"baseline_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(owner_url).set(drivername="postgresql+psycopg2")
    url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        baseline_app.setup_schema(connection)
    engine.dispose()
    app = baseline_app.create_app(url.render_as_string(hide_password=False))
    app.config["BASELINE_URL"] = url
    return app.test_client()


def test_baseline_given_the_service_rows_answers_the_same_page(
    client: FlaskClient, baseline_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    headers = auth_headers(tenant_a)
    for first, email in (("Ada", "ada@example.com"), ("Alan", None)):
        payload = {"first_name": first, "last_name": "X", "email": email}
        assert client.post("/v1/users", json=payload, headers=headers).status_code == 201
    query = "/v1/users?page=1&page_size=20"
    service = client.get(query, headers=headers).json
    assert service is not None
    engine = sa.create_engine(baseline_client.application.config["BASELINE_URL"])
    with engine.begin() as connection:
        baseline_app.insert_users(connection, {str(tenant_a.id): service["records"]})
    engine.dispose()
    baseline = baseline_client.get(query, headers=headers).json
    assert baseline is not None
    assert rows.differences(service, baseline) == []
    created = baseline_client.post(
        "/v1/users", json={"first_name": "Grace", "last_name": "X"}, headers=headers
    ).json
    assert created is not None
    assert list(created) == list(service["records"][0])  # a create answers the same shape


def test_wrk_script_exists_for_load() -> None:
    assert load.WRK_SCRIPT.is_file()
    assert "function done" in load.WRK_SCRIPT.read_text()
