"""The local PostgreSQL cluster that ``make run`` and the suite start (app/dev/cluster.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from app.dev.cluster import LocalCluster
from app.dev.errors import PostgresNotFound
from app.dev.pg_binaries import find_pg_bindir, pg_version

ClusterFactory = Callable[..., LocalCluster]  # the cluster_factory fixture of conftest.py


def _fetchall(url: str, query: str) -> list[tuple[object, ...]]:
    with closing(psycopg2.connect(url, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def _with_password(url: str, password: str) -> str:
    params = parse_dsn(url)
    return (
        f"postgresql://{params['user']}:{password}@{params['host']}:{params['port']}"
        f"/{params['dbname']}"
    )


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A port on 127.0.0.1 that is taken for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_find_pg_bindir_finds_server_14_or_newer() -> None:
    bindir = find_pg_bindir()

    assert all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
    assert pg_version(bindir) >= 14


def test_find_pg_bindir_resolves_symlinks_on_path(tmp_path: Path) -> None:
    real = find_pg_bindir()
    (tmp_path / "initdb").symlink_to(real / "initdb")

    assert find_pg_bindir(path=str(tmp_path), fallback_roots=()) == real


def test_find_pg_bindir_without_binaries_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFound) as excinfo:
        find_pg_bindir(path=str(tmp_path), fallback_roots=())

    message = str(excinfo.value)
    assert "\n" not in message
    assert "apt-get install postgresql" in message


def test_owner_login_with_right_password_succeeds(owner_url: str) -> None:
    assert _fetchall(owner_url, "SELECT current_user, current_database()") == [
        ("tenantpool", "tenantpool")
    ]


def test_owner_login_with_wrong_password_is_rejected(owner_url: str) -> None:
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(_with_password(owner_url, "not-the-password"), connect_timeout=10)


def test_superuser_login_with_wrong_password_is_rejected(pg_cluster: LocalCluster) -> None:
    url = _with_password(pg_cluster.superuser_url(), "not-the-password")

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(url, connect_timeout=10)


def test_pg_hba_allows_only_scram_over_loopback_tcp(pg_cluster: LocalCluster) -> None:
    rules = _fetchall(
        pg_cluster.superuser_url(),
        "SELECT type, database, address, auth_method, error FROM pg_hba_file_rules "
        "ORDER BY line_number",
    )

    assert rules[:2] == [
        ("host", ["all"], "127.0.0.1", "scram-sha-256", None),
        ("host", ["all"], "::1", "scram-sha-256", None),
    ]
    # A streaming standby (app/dev/standby.py, the replica tests) adds replication the same way.
    assert rules[2:] in ([], [("host", ["replication"], "127.0.0.1", "scram-sha-256", None)])


def test_pg_hba_file_has_no_trust_line(pg_cluster: LocalCluster) -> None:
    text = (pg_cluster.datadir / "pg_hba.conf").read_text()

    assert "trust" not in text


def test_server_listens_on_loopback_tcp_only(pg_cluster: LocalCluster) -> None:
    rows = _fetchall(
        pg_cluster.superuser_url(),
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('listen_addresses', 'unix_socket_directories', 'password_encryption')",
    )
    settings = {name: value for name, value in rows}

    assert settings == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "password_encryption": "scram-sha-256",
    }


def test_owner_role_has_createrole_but_is_not_superuser(owner_url: str) -> None:
    rows = _fetchall(
        owner_url,
        "SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = current_user",
    )

    assert rows == [(False, True, True)]


def test_owner_role_owns_its_database(owner_url: str) -> None:
    rows = _fetchall(
        owner_url,
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    )

    assert rows == [("tenantpool",)]


def test_bootstrap_owner_is_idempotent(pg_cluster: LocalCluster, owner_url: str) -> None:
    password = parse_dsn(owner_url)["password"]

    again = pg_cluster.bootstrap_owner("tenantpool", password, "tenantpool")

    assert again == owner_url
    assert _fetchall(again, "SELECT current_user") == [("tenantpool",)]


def test_server_log_holds_no_password(pg_cluster: LocalCluster, owner_url: str) -> None:
    _fetchall(owner_url, "SELECT 1")  # at least one logged connection
    log_text = pg_cluster.log_path.read_text()

    assert "connection authorized: user=tenantpool" in log_text
    assert parse_dsn(owner_url)["password"] not in log_text
    assert str(pg_cluster.superuser_password) not in log_text


def test_start_reuses_a_running_server(pg_cluster: LocalCluster) -> None:
    other = LocalCluster(pg_cluster.datadir)

    assert other.start() is False
    assert other.port == pg_cluster.port


def test_restart_keeps_data(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory()
    url = cluster.superuser_url()
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (value text); INSERT INTO kept VALUES ('still here')")

    cluster.stop()
    assert cluster.start() is True

    assert _fetchall(cluster.superuser_url(), "SELECT value FROM kept") == [("still here",)]


def test_start_on_a_taken_port_picks_another(
    cluster_factory: ClusterFactory, listening_socket: socket.socket
) -> None:
    taken = listening_socket.getsockname()[1]
    cluster = cluster_factory()
    cluster.stop()

    assert cluster.start(taken) is True

    assert cluster.port != taken
    assert _fetchall(cluster.superuser_url(), "SELECT 1") == [(1,)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_data_directory_belongs_to_the_server_user_when_root(pg_cluster: LocalCluster) -> None:
    assert pg_cluster.datadir.stat().st_uid != 0
