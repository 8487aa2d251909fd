"""``flask tenants create --cluster``, ``flask tenants move``, ``flask db`` on every cluster."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask

from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from app.models import Tenant, User
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import create_tenant
from tests.conftest import FreshDatabase
from tests.standbys import multi_host
from tests.support import (
    Inspector,
    MakePlaced,
    app_for,
    auth_headers,
    invoke,
    tenant_tables,
)


def test_tenants_create_places_the_tenant_on_the_cluster_asked_for(
    placed_app: Flask, inspect: Inspector
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    result = invoke(placed_app, "tenants", "create", name, "--cluster", "c2")
    assert result.exit_code == 0, result.output
    found = re.search(r"^id=(\S+)  name=\S+  api_key=tpk_\S+$", result.output, re.MULTILINE)
    assert found, result.output
    tenant_id = uuid.UUID(found[1])
    assert inspect.placed("c2", tenant_id)
    assert not inspect.placed("default", tenant_id)


def test_tenants_create_on_an_unknown_cluster_is_a_usage_error(placed_app: Flask) -> None:
    result = invoke(placed_app, "tenants", "create", "x", "--cluster", "c9")
    assert result.exit_code == 2
    assert "no cluster named 'c9'" in result.output


def test_tenants_move_by_name_shows_progress(
    placed_app: Flask, placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("default")
    session = placed.open_session(tenant.id)
    with session.begin():
        session.execute(sa.insert(User), [{"first_name": "a", "last_name": "b"}] * 4)
    session.close()
    placed.forget(tenant.id, "test")
    with placed.control_engine.connect() as connection:
        query = sa.select(Tenant.name).where(Tenant.id == tenant.id)
        name = connection.execute(query).scalar_one()
    result = invoke(placed_app, "tenants", "move", name, "--to", "c2")
    assert result.exit_code == 0, result.output
    assert "copying users: 4/4 (100%) done" in result.output
    assert f"moved tenant {tenant.id} from default to c2" in result.output
    assert inspect.tenant_rows("c2", "users", tenant.id) == 4
    again = invoke(placed_app, "tenants", "move", name, "--to", "c2")
    assert again.exit_code == 0
    assert "on c2 already" in again.output


def test_tenants_move_unknown_tenant_fails_naming_it(placed_app: Flask) -> None:
    result = invoke(placed_app, "tenants", "move", "nobody", "--to", "c2")
    assert result.exit_code == 1
    assert "no tenant with id or name 'nobody'" in result.output


def test_db_current_lists_every_database(placed_app: Flask) -> None:
    result = invoke(placed_app, "db", "current")
    assert result.exit_code == 0, result.output
    assert re.findall(r"^(control plane|cluster c2):$", result.output, re.MULTILINE) == [
        "control plane",
        "cluster c2",
    ]


@pytest.fixture
def two_fresh_databases(
    fresh_database: FreshDatabase, second_cluster: LocalCluster
) -> dict[str, str]:
    """A fresh control plane and a fresh data cluster ``c2`` on the second server."""
    data = fresh_database(second_cluster)
    return {**fresh_database(), "APP_CLUSTERS": json.dumps({"c2": data["APP_DATABASE_URL"]})}


def test_tenancy_check_covers_every_cluster(two_fresh_databases: dict[str, str]) -> None:
    with app_for(two_fresh_databases) as app:
        result = invoke(app, "tenancy", "check")
    assert result.exit_code == 0, result.output
    tables = 2 * len(tenant_tables())  # the same schema on both
    assert f"tenant isolation check passed on 2 databases: {tables} tenant table(s)" in (
        result.output
    )


def test_tenancy_check_fails_when_a_data_cluster_holds_secrets(
    two_fresh_databases: dict[str, str],
) -> None:
    data_url = json.loads(two_fresh_databases["APP_CLUSTERS"])["c2"]
    engine = sa.create_engine(data_url)
    try:
        with engine.begin() as connection:
            stray = uuid.uuid4()
            connection.execute(
                sa.insert(Tenant).values(
                    id=stray,
                    name="stray",
                    db_user=f"t_{stray.hex}",
                    db_password_encrypted="v1:x:y:z",
                    key_id="x",
                    api_key_hash=b"\x00",
                )
            )
    finally:
        engine.dispose()
    with app_for(two_fresh_databases) as app:
        result = invoke(app, "tenancy", "check")
    assert result.exit_code == 1
    assert "cluster c2: table tenants: holds 1 row(s) on a data cluster" in result.output


def test_tenants_move_to_a_cluster_whose_dsn_lists_a_dead_host_first(
    two_clusters_env: dict[str, str], second_cluster: LocalCluster, inspect: Inspector
) -> None:
    c2 = json.loads(two_clusters_env["APP_CLUSTERS"])["c2"]
    listed = multi_host(c2, free_port(), second_cluster.port)  # a primary gone, then c2
    env = {**two_clusters_env, "APP_CLUSTERS": json.dumps({"c2": listed})}
    with app_for(env) as app:
        tenancy = tenancy_of(app)
        name = f"listed-{uuid.uuid4().hex[:8]}"
        tenant = create_tenant(tenancy.clusters, tenancy.keyring, name, tenancy.limits)
        session = tenancy.open_session(tenant.id)
        with session.begin():
            session.execute(sa.insert(User), [{"first_name": "a", "last_name": "b"}] * 3)
        session.close()
        tenancy.forget(tenant.id, "test")

        result = invoke(app, "tenants", "move", name, "--to", "c2")

        assert result.exit_code == 0, result.output
        assert inspect.tenant_rows("c2", "users", tenant.id) == 3
        answer = app.test_client().get("/v1/users", headers=auth_headers(tenant))
        assert answer.get_json()["total"] == 3  # served from c2 through the listed DSN
