"""Fixtures of the database tests: a streaming standby of the suite's cluster and apps on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from flask import Flask

from app import create_app
from app.dev.cluster import LocalCluster
from app.dev.standby import make_standby
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.serving.ways import ServingMode, ServingWays
from config import Settings
from tests.replicas import replica_dsn

# As the suite's cluster (tests/conftest.py): durability buys nothing here.
_FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def replica_cluster(pg_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """A hot standby of the suite's cluster (pg_basebackup, streaming), made when first asked."""
    standby = make_standby(
        pg_cluster,
        pg_cluster.datadir.parent / "replica",
        name="suite_replica",
        max_connections=200,
        extra_settings=_FAST,
    )
    yield standby
    standby.stop()


@pytest.fixture(scope="session", params=["dedicated", "shared", "mix"])
def replica_app(
    request: pytest.FixtureRequest,
    settings: Settings,
    migrated: None,
    replica_cluster: LocalCluster,
) -> Iterator[Flask]:
    """The application reading on ``replica_cluster`` (APP_READ_REPLICAS), in each way.

    Its lag bound is generous: these tests are about what a replica lets a tenant see, not
    about when it leaves the rotation (tests/db/test_replica_reads.py).
    """
    replicas = {"default": (replica_dsn(replica_cluster),)}
    configured = dataclasses.replace(
        settings, serving=request.param, read_replicas=replicas, replica_max_lag=60.0
    )
    application = create_app(configured)
    if request.param == "mix":  # as mix_app: a tenant is hot from its first request on
        tenancy_of(application).ways = ServingWays(
            ServingMode.MIX, dedicated_slots=2, window=0.05, min_requests=1
        )
    yield application
    tenancy_of(application).close()


@pytest.fixture
def replica_tenancy(replica_app: Flask) -> Tenancy:
    return tenancy_of(replica_app)
