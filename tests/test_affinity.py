"""The start-up check that shared connections keep their backend, against real PgBouncers."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.affinity import AffinityError, check_affinity, keeps_backend
from app.dev.cluster import LocalCluster
from app.dev.pgbouncer import INSTALL_HINT, LocalPgBouncer, find_pgbouncer
from app.dev.ports import free_port
from config import Settings
from tests.standbys import multi_host
from tests.support import gunicorn_refusal

pytestmark = pytest.mark.skipif(find_pgbouncer() is None, reason=INSTALL_HINT)

Bouncer = Callable[[str], sa.URL]
"""Start a PgBouncer in ``pool_mode`` in front of the suite's database; the owner's URL there."""


@pytest.fixture
def bouncer(pg_cluster: LocalCluster, owner_url: str) -> Iterator[Bouncer]:
    owner = sa.make_url(owner_url)
    # Not under pytest's 0700 tmp root: PgBouncer may run as another account (when root).
    workdirs: list[Path] = []
    running: list[LocalPgBouncer] = []

    def start(pool_mode: str) -> sa.URL:
        workdir = Path(tempfile.mkdtemp(prefix="tenantpool-affinity-"))
        workdirs.append(workdir)
        pgbouncer = LocalPgBouncer(
            workdir,
            server_port=pg_cluster.port,
            database=str(owner.database),
            users={str(owner.username): str(owner.password)},
            settings={"auth_type": "scram-sha-256", "pool_mode": pool_mode},
        )
        pgbouncer.start()
        running.append(pgbouncer)
        return owner.set(port=pgbouncer.port)

    yield start
    for pgbouncer in running:
        pgbouncer.stop()
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)


def test_affinity_direct_connection_keeps_its_backend(owner_url: str) -> None:
    assert keeps_backend(sa.make_url(owner_url), connect_timeout=5)


def test_affinity_multi_host_dsn_is_checked_where_it_connects(
    owner_url: str, pg_cluster: LocalCluster, bouncer: Bouncer
) -> None:
    # A primary that is gone, then the server: the check connects as the service would.
    assert keeps_backend(
        sa.make_url(multi_host(owner_url, free_port(), pg_cluster.port)), connect_timeout=5
    )
    pooled = bouncer("transaction")
    listed = multi_host(pooled.render_as_string(hide_password=False), free_port(), pooled.port or 0)
    assert not keeps_backend(sa.make_url(listed), connect_timeout=5)


def test_affinity_session_pooler_keeps_the_backend(bouncer: Bouncer) -> None:
    assert keeps_backend(bouncer("session"), connect_timeout=5)


def test_affinity_transaction_pooler_moves_connections(bouncer: Bouncer) -> None:
    assert not keeps_backend(bouncer("transaction"), connect_timeout=5)


def test_affinity_shared_way_refuses_a_cluster_behind_a_transaction_pooler(
    settings: Settings, bouncer: Bouncer
) -> None:
    through = bouncer("transaction").render_as_string(hide_password=False)
    clusters = {"eu": through}
    shared = dataclasses.replace(settings, serving="shared", clusters=clusters)
    with pytest.raises(AffinityError) as raised:
        check_affinity(shared)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("APP_SERVING=shared: cluster 'eu' ")
    assert "APP_SERVING=dedicated" in message
    # Dedicated serving has nothing to check; the direct clusters pass.
    check_affinity(dataclasses.replace(shared, serving="dedicated"))
    check_affinity(dataclasses.replace(settings, serving="mix", clusters={}))


def test_affinity_default_routed_through_a_pooler_is_fine_for_the_gateway(
    settings: Settings, bouncer: Bouncer
) -> None:
    """Tenants routed through PgBouncer (compose): the gateway logs in as the owner does."""
    through = bouncer("transaction")
    route = sa.URL.create(
        "postgresql+psycopg2", host=through.host, port=through.port, database=through.database
    )
    routed = {"default": route.render_as_string(hide_password=False)}
    check_affinity(dataclasses.replace(settings, serving="shared", clusters=routed))


def test_affinity_refusal_reads_as_one_line_at_gunicorn_start(
    app_env: dict[str, str], bouncer: Bouncer
) -> None:
    through = bouncer("transaction").render_as_string(hide_password=False)
    env = {**app_env, "APP_SERVING": "mix", "APP_CLUSTERS": json.dumps({"eu": through})}
    [line] = gunicorn_refusal(env)
    assert line.startswith("tenantpool: not starting: APP_SERVING=mix: cluster 'eu' ")
