"""The start-up check: every worker's connections must fit in the server's free slots."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import sqlalchemy as sa

from app.capacity import CapacityError, check_capacity, demand_per_worker
from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from config import Settings, psycopg2_url
from tests.conftest import ClusterFactory
from tests.standbys import multi_host


def test_capacity_demand_counts_budget_control_pool_and_listener(settings: Settings) -> None:
    sized = dataclasses.replace(settings, connection_budget=6)

    assert demand_per_worker(sized, control_plane=True) == 6 + 4 + 1
    assert demand_per_worker(sized, control_plane=False) == 6


def test_capacity_refuses_workers_that_cannot_fit(settings: Settings) -> None:
    # The suite's server: max_connections 200, 3 reserved for superusers, 197 for us.
    sized = dataclasses.replace(settings, workers=18, connection_budget=6)

    with pytest.raises(CapacityError) as raised:
        check_capacity(sized)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("18 workers x 11 connections = 198 exceed the 197 that ")
    assert "(max_connections 200 - reserved 3)" in message
    assert "APP_CONNECTION_BUDGET" in message


def test_capacity_accepts_workers_that_fit(settings: Settings) -> None:
    check_capacity(dataclasses.replace(settings, workers=17, connection_budget=6))


def test_capacity_counts_each_extra_cluster_server(
    settings: Settings, cluster_factory: ClusterFactory
) -> None:
    other = cluster_factory(max_connections=8)  # 5 for non-superusers
    other_url = psycopg2_url(
        other.bootstrap_owner("capacity", "capacity-test-password", "capacity")
    )
    sized = dataclasses.replace(settings, connection_budget=3, clusters={"eu": other_url})
    check_capacity(dataclasses.replace(sized, workers=1))

    # 2 x (3 + 5) fit in the control plane's 197; 2 x 3 do not fit in the other's 5.
    with pytest.raises(CapacityError, match="2 workers x 3 connections = 6 exceed the 5"):
        check_capacity(dataclasses.replace(sized, workers=2))


def test_capacity_unreachable_server_is_logged_not_fatal(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = dataclasses.replace(
        settings, database_url="postgresql+psycopg2://u:p@127.0.0.1:1/x", connect_timeout=1
    )

    with caplog.at_level(logging.WARNING, logger="app.capacity"):
        check_capacity(unreachable)

    assert "cannot check the connection capacity" in caplog.text


def test_capacity_counts_every_host_of_a_multi_host_dsn(
    settings: Settings, pg_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # A primary that is down and the suite's server as its standby: after a failover the
    # connections land on the other, so each must hold them; the down one is only logged.
    down = free_port()
    listed = dataclasses.replace(
        settings,
        database_url=multi_host(settings.database_url, down, pg_cluster.port),
        connect_timeout=1,
    )

    with caplog.at_level(logging.INFO, logger="app.capacity"):
        check_capacity(dataclasses.replace(listed, workers=17, connection_budget=6))
    with pytest.raises(CapacityError, match=f"exceed the 197 that 127.0.0.1:{pg_cluster.port} "):
        check_capacity(dataclasses.replace(listed, workers=18, connection_budget=6))

    assert f"cannot check the connection capacity of 127.0.0.1:{down} " in caplog.text
    assert f"connections fit: 187 of 197 on 127.0.0.1:{pg_cluster.port}" in caplog.text


def test_capacity_counts_replica_servers_and_the_watcher(
    settings: Settings, cluster_factory: ClusterFactory
) -> None:
    # Any server serves for counting: the check reads max_connections, not the role it plays.
    replica = cluster_factory(max_connections=8)  # 5 for non-superusers
    owner = sa.make_url(settings.database_url)  # it logs in there as on its primary
    replica.bootstrap_owner(str(owner.username), str(owner.password), "tenantpool")
    dsn = f"postgresql://127.0.0.1:{replica.port}/tenantpool"
    sized = dataclasses.replace(settings, connection_budget=3, serving="mix", gateway_pool_size=1)
    assert demand_per_worker(sized, control_plane=False, gateways=1, watchers=1) == 3 + 1 + 1
    check_capacity(dataclasses.replace(sized, workers=1, read_replicas={"default": (dsn,)}))

    # On the replica: 2 x (budget 3 + gateway 1 + watcher 1) = 10 do not fit in its 5.
    with pytest.raises(
        CapacityError,
        match=f"2 workers x 5 connections = 10 exceed the 5 that 127.0.0.1:{replica.port}",
    ):
        check_capacity(dataclasses.replace(sized, workers=2, read_replicas={"default": (dsn,)}))
