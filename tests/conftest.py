"""Suite-wide fixtures: one throwaway PostgreSQL cluster, its owner role, the APP_* environment.

The suite assumes no running service: ``pg_cluster`` initdb's and starts a cluster in a
fresh temporary directory and removes it at the end, even when tests fail. Tests connect
as the owner (and later as tenant roles), never as the superuser, except to inspect the
server itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg2
import pytest
from alembic import command
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.cli.db import alembic_config
from app.dev.cluster import LocalCluster
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant
from app.tenancy.control.roles import role_name
from app.tenancy.serving.ways import ServingMode, ServingWays
from config import Settings, load_settings, psycopg2_url
from config.jwt import JwtSettings
from tests.idp import AUDIENCE, ISSUER, Idp
from tests.support import Inspector, MakePlaced, flask_or_fail

# Durability buys nothing for a cluster deleted at the end of the run.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

ClusterFactory = Callable[..., LocalCluster]
FreshDatabase = Callable[..., dict[str, str]]


def _new_cluster(
    base: Path, max_connections: int, extra_settings: Mapping[str, str] | None = None
) -> LocalCluster:
    """An initialized, started cluster in ``base/data`` with a random superuser password."""
    # mkdtemp makes a 0700 directory; when we are root the server runs as another user,
    # which must traverse it to reach the data directory.
    base.chmod(0o755)
    cluster = LocalCluster(base / "data")
    cluster.init(secrets.token_urlsafe(24))
    cluster.start(
        max_connections=max_connections, extra_settings={**_FAST_SETTINGS, **(extra_settings or {})}
    )
    return cluster


@contextlib.contextmanager
def throwaway_cluster(
    max_connections: int = 20, extra_settings: Mapping[str, str] | None = None
) -> Iterator[LocalCluster]:
    """A started cluster in a fresh temporary directory (about a second), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="tenantpool-pg-"))
    try:
        cluster = _new_cluster(base, max_connections, extra_settings)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """The suite's PostgreSQL cluster: 127.0.0.1, scram-sha-256, max_connections=200."""
    with throwaway_cluster(max_connections=200) as cluster:
        yield cluster


@pytest.fixture
def cluster_factory() -> Iterator[ClusterFactory]:
    """Make extra started clusters for one test (about a second each); all removed after it.

    The default max_connections leaves room for a service of 2 workers x 4 threads, which
    gunicorn refuses to start below 2 x 11 + 3 reserved (docs/operations.md, Sizing).
    """
    with contextlib.ExitStack() as stack:

        def make(
            max_connections: int = 40, extra_settings: Mapping[str, str] | None = None
        ) -> LocalCluster:
            return stack.enter_context(throwaway_cluster(max_connections, extra_settings))

        yield make


@pytest.fixture(scope="session")
def second_cluster() -> Iterator[LocalCluster]:
    """A second PostgreSQL server for tenant placement tests (made when first asked for)."""
    with throwaway_cluster(max_connections=100) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def owner_url(pg_cluster: LocalCluster) -> str:
    """URL of the control-plane owner: LOGIN, CREATEROLE, not superuser, owns ``tenantpool``."""
    return pg_cluster.bootstrap_owner("tenantpool", secrets.token_urlsafe(24), "tenantpool")


@pytest.fixture(scope="session")
def app_env(owner_url: str) -> dict[str, str]:
    """The APP_* environment the application and its commands run with in tests."""
    return {
        "APP_ENV": "testing",
        "APP_DATABASE_URL": owner_url,
        "APP_ENCRYPTION_KEYS": f"test1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "test1",
        "APP_ADMIN_TOKEN": secrets.token_urlsafe(32),
        # Low on purpose: tenant passwords are random, iterations only slow connects.
        "APP_SCRAM_ITERATIONS": "64",
        # Most tests are about one way of serving; the isolation tests run every way
        # (serving_app below), whatever the product's default is.
        "APP_SERVING": "dedicated",
        # Every test client is 127.0.0.1: the suite's 401s would add up to a 429 for the
        # tests after them. The throttle's own tests give their app a low limit.
        "APP_AUTH_FAILURE_LIMIT": "1000000",
        # The services of other tests (faults, lifecycle, PgBouncer...) load 4-thread workers
        # with several tenants at once, which the fair share answers with 429s those tests
        # are not about: no cap for them. tests/e2e/test_fair_share.py and the unit tests run
        # the product's default.
        "APP_TENANT_THREAD_SHARE": "256",
        "APP_TENANT_NODE_SHARE": "65536",
    }


@pytest.fixture(scope="session")
def fresh_database(pg_cluster: LocalCluster, app_env: dict[str, str]) -> FreshDatabase:
    """Make migrated databases of their own, each with its own owner and key; return its env.

    For tests that change every tenant of a database (key rotation) or break its isolation
    on purpose. ``cluster`` defaults to the suite's; roles are cluster-wide, so a test that
    changes a role's attributes passes one from ``cluster_factory``.
    """

    def make(cluster: LocalCluster | None = None) -> dict[str, str]:
        name = f"tp_{uuid.uuid4().hex[:12]}"
        owner_password = secrets.token_urlsafe(24)
        url = psycopg2_url((cluster or pg_cluster).bootstrap_owner(name, owner_password, name))
        command.upgrade(alembic_config(url), "head")
        return {
            **app_env,
            "APP_DATABASE_URL": url,
            "APP_ENCRYPTION_KEYS": f"fresh1:{secrets.token_hex(32)}",
            "APP_ENCRYPTION_ACTIVE_KEY": "fresh1",
        }

    return make


@pytest.fixture(scope="session")
def migrated(app_env: dict[str, str]) -> None:
    """Apply the migrations once, through the real ``flask db upgrade`` command."""
    upgrade_database(app_env)


@pytest.fixture(scope="session")
def two_clusters_env(
    app_env: dict[str, str], migrated: None, second_cluster: LocalCluster
) -> dict[str, str]:
    """``app_env`` plus ``APP_CLUSTERS`` naming ``c2`` (the second server), migrated too."""
    c2 = second_cluster.bootstrap_owner("tenantpool", secrets.token_urlsafe(24), "tenantpool")
    env = {**app_env, "APP_CLUSTERS": json.dumps({"c2": c2})}
    upgrade_database(env)
    return env


def upgrade_database(app_env: Mapping[str, str]) -> None:
    """Run the real ``flask db upgrade`` with ``app_env``; fail the test with its output."""
    flask_or_fail(app_env, "db", "upgrade")


@pytest.fixture(scope="session")
def settings(app_env: dict[str, str]) -> Settings:
    """Settings of the in-process app, from the suite's APP_* environment."""
    return load_settings(app_env)


@pytest.fixture(scope="session")
def app(settings: Settings, migrated: None) -> Iterator[Flask]:
    """The application, in process, on the migrated suite database."""
    application = create_app(settings)
    yield application
    tenancy_of(application).close()


@pytest.fixture(scope="session")
def tenancy(app: Flask) -> Tenancy:
    return tenancy_of(app)


@pytest.fixture(scope="session")
def shared_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    """The application serving every tenant over shared gateway connections."""
    application = create_app(dataclasses.replace(settings, serving="shared"))
    yield application
    tenancy_of(application).close()


@pytest.fixture(scope="session")
def shared_tenancy(shared_app: Flask) -> Tenancy:
    return tenancy_of(shared_app)


@pytest.fixture(scope="session")
def mix_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    """``mix``, tuned so a tenant is hot from its first request of a 50 ms window on.

    So one test crosses both ways: a tenant's first requests go shared, later ones to its
    own engine, and back once it cools down.
    """
    application = create_app(dataclasses.replace(settings, serving="mix"))
    tenancy_of(application).ways = ServingWays(
        ServingMode.MIX, dedicated_slots=2, window=0.05, min_requests=1
    )
    yield application
    tenancy_of(application).close()


@pytest.fixture(params=["dedicated", "shared", "mix"])
def serving_app(request: pytest.FixtureRequest) -> Flask:
    """The application in each way of serving tenants (``APP_SERVING``), in turn."""
    name = {"dedicated": "app", "shared": "shared_app", "mix": "mix_app"}[request.param]
    application: Flask = request.getfixturevalue(name)
    return application


@pytest.fixture(scope="session")
def jwt_idp() -> Iterator[Idp]:
    """The identity provider of the JWT apps: one RSA key, ``k1``, published."""
    server = Idp()
    server.add_key("k1")
    yield server
    server.close()


@pytest.fixture(scope="session", params=["dedicated", "shared"])
def jwt_app(
    request: pytest.FixtureRequest, settings: Settings, migrated: None, jwt_idp: Idp
) -> Iterator[Flask]:
    """The application accepting end users' JWTs from ``jwt_idp``, in each way of serving.

    Writes need the scope ``write``; the role ``admin`` sees all of a tenant's rows.
    """
    jwt = JwtSettings(
        jwks_url=jwt_idp.url,
        issuer=ISSUER,
        audience=AUDIENCE,
        tenant_claim="tenant_id",
        roles_claim="roles",
        admin_role="admin",
        write_scope="write",
    )
    application = create_app(dataclasses.replace(settings, serving=request.param, jwt=jwt))
    yield application
    tenancy_of(application).close()


@pytest.fixture
def jwt_client(jwt_app: Flask) -> FlaskClient:
    return jwt_app.test_client()


@pytest.fixture
def serving_tenancy(serving_app: Flask) -> Tenancy:
    return tenancy_of(serving_app)


@pytest.fixture
def serving_client(serving_app: Flask) -> FlaskClient:
    return serving_app.test_client()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_tenant(tenancy: Tenancy) -> Callable[[], ProvisionedTenant]:
    """Create a fresh tenant (role, row, API key) named after the test."""

    def make() -> ProvisionedTenant:
        return create_tenant(
            tenancy.clusters, tenancy.keyring, f"test-{uuid.uuid4().hex[:12]}", tenancy.limits
        )

    return make


@pytest.fixture
def tenant_a(make_tenant: Callable[[], ProvisionedTenant]) -> ProvisionedTenant:
    return make_tenant()


@pytest.fixture
def tenant_b(make_tenant: Callable[[], ProvisionedTenant]) -> ProvisionedTenant:
    return make_tenant()


@pytest.fixture(scope="session")
def placed_app(two_clusters_env: dict[str, str]) -> Iterator[Flask]:
    """The application configured with ``APP_CLUSTERS={"c2": <second server>}``."""
    application = create_app(load_settings(two_clusters_env))
    yield application
    tenancy_of(application).close()


@pytest.fixture(scope="session")
def placed(placed_app: Flask) -> Tenancy:
    return tenancy_of(placed_app)


@pytest.fixture
def placed_client(placed_app: Flask) -> FlaskClient:
    return placed_app.test_client()


@pytest.fixture(scope="session")
def placed_shared_app(two_clusters_env: dict[str, str]) -> Iterator[Flask]:
    """``placed_app``, serving every tenant the shared way (a gateway pool per cluster)."""
    application = create_app(load_settings({**two_clusters_env, "APP_SERVING": "shared"}))
    yield application
    tenancy_of(application).close()


@pytest.fixture
def make_placed(placed: Tenancy) -> MakePlaced:
    """Create a fresh tenant on the named cluster (``default`` or ``c2``)."""

    def make(cluster: str) -> ProvisionedTenant:
        name = f"placed-{uuid.uuid4().hex[:12]}"
        return create_tenant(placed.clusters, placed.keyring, name, placed.limits, cluster=cluster)

    return make


@pytest.fixture(scope="session")
def inspect(pg_cluster: LocalCluster, second_cluster: LocalCluster) -> Inspector:
    """Superuser queries on ``default`` and ``c2``, only to look at roles and rows."""
    return Inspector(
        {
            "default": pg_cluster.superuser_url("tenantpool"),
            "c2": second_cluster.superuser_url("tenantpool"),
        }
    )


@pytest.fixture
def statement_logging(
    pg_cluster: LocalCluster, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> Iterator[None]:
    """Tenant A's new connections log every message they send (log_statement = all)."""
    role = role_name(tenant_a.id)
    superuser = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    superuser.autocommit = True
    with superuser.cursor() as cursor:
        cursor.execute(f"ALTER ROLE \"{role}\" SET log_statement = 'all'")
    tenancy.forget(tenant_a.id, "test")  # new connections pick the role setting up
    yield
    with superuser.cursor() as cursor:
        cursor.execute(f'ALTER ROLE "{role}" RESET log_statement')
    superuser.close()
