"""Where a database URL points: one host, or libpq's multi-host list as SQLAlchemy spells it."""

from __future__ import annotations

import psycopg2
import pytest

from app.dbhosts import hosts, libpq_params, single_host, where
from app.dev.cluster import LocalCluster
from app.dev.ports import free_port
from tests.standbys import multi_host

LISTED = "postgresql+psycopg2://u:p@/db?host=h1:5433&host=h2:5434&target_session_attrs=read-write"


def test_dbhosts_hosts_of_a_plain_url_is_its_host() -> None:
    assert hosts("postgresql://u:p@db.example:6432/db") == (("db.example", 6432),)
    assert hosts("postgresql://u:p@/db") == ((None, None),)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (LISTED, (("h1", 5433), ("h2", 5434))),
        ("postgresql://u:p@/db?host=h1,h2&port=5433,5434", (("h1", 5433), ("h2", 5434))),
        ("postgresql://u:p@/db?host=h1,h2&port=5433", (("h1", 5433), ("h2", 5433))),
        ("postgresql://u:p@/db?host=[::1]:5433&host=h2", (("::1", 5433), ("h2", None))),
        ("postgresql://u:p@/db?host=/run/postgresql", (("/run/postgresql", None),)),
    ],
)
def test_dbhosts_hosts_reads_every_multi_host_spelling(url: str, expected: tuple[object]) -> None:
    assert hosts(url) == expected


def test_dbhosts_where_names_every_host_and_no_password() -> None:
    assert where(LISTED.replace(":p@", ":s3cret@")) == "h1:5433,h2:5434"


def test_dbhosts_single_host_points_at_one_server_of_the_list() -> None:
    one = single_host(LISTED, ("h2", 5434))

    assert (one.host, one.port, one.database, one.username) == ("h2", 5434, "db", "u")
    assert "target_session_attrs" not in one.query
    assert "host" not in one.query


def test_dbhosts_libpq_params_reach_the_live_host_of_a_list(pg_cluster: LocalCluster) -> None:
    # libpq itself reads ?host=h1:p1&host=h2:p2 wrongly; these parameters are libpq's form.
    url = multi_host(pg_cluster.superuser_url(), free_port(), pg_cluster.port)

    params = libpq_params(url)
    connection = psycopg2.connect(**params, connect_timeout=5)
    try:
        assert connection.info.port == pg_cluster.port
    finally:
        connection.close()
