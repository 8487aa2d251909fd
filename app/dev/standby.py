"""Streaming standbys of a :class:`LocalCluster`, made with ``pg_basebackup`` (no Flask).

For tests and local experiments with read replicas and failover: a hot standby that
replays the primary's WAL over a replication connection as the superuser, optionally
synchronous (``synchronous_standby_names = 'ANY 1 (<name>)'`` on the primary) or delayed
(``recovery_min_apply_delay``). The primary's pg_hba.conf gains one line for replication
over loopback with SCRAM, like every other line there.

The superuser password reaches ``pg_basebackup`` through a password file readable only by
the server user, removed afterwards; the standby keeps it in ``primary_conninfo``, in its
own data directory (mode 0700), as any standby does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
from psycopg2 import sql

from app.dev.cluster import LocalCluster
from app.dev.errors import ClusterError

_REPLICATION_HBA = "host    replication    postgres    127.0.0.1/32    scram-sha-256\n"


def make_standby(
    primary: LocalCluster,
    datadir: Path,
    *,
    port: int | None = None,
    name: str = "standby",
    synchronous: bool = False,
    apply_delay_ms: int | None = None,
    max_connections: int = 100,
    extra_settings: dict[str, str] | None = None,
) -> LocalCluster:
    """Clone the running ``primary`` into ``datadir`` and start it as a hot standby.

    ``name`` is the standby's ``application_name`` on the primary (what
    ``synchronous_standby_names`` matches). ``max_connections`` must be at least the
    primary's (PostgreSQL refuses to start a standby below it). Raises ClusterError.
    """
    password = primary.superuser_password
    if password is None:
        raise ClusterError("the primary's superuser password is unknown")
    _allow_replication(primary)
    standby = LocalCluster(datadir, bindir=primary.bindir, superuser_password=password)
    _base_backup(primary, standby.datadir, password)
    conninfo = (
        f"host=127.0.0.1 port={primary.port} user=postgres password={password} "
        f"application_name={name}"
    )
    settings = {"primary_conninfo": conninfo, "hot_standby_feedback": "on"}
    if apply_delay_ms is not None:
        settings["recovery_min_apply_delay"] = f"{apply_delay_ms}ms"
    _append_settings(standby, settings)
    signal = standby.datadir / "standby.signal"
    signal.touch()
    primary._give_to_server_user(signal)
    standby.start(port, max_connections=max_connections, extra_settings=extra_settings)
    if synchronous:
        set_primary_setting(primary, "synchronous_standby_names", f"ANY 1 ({name})")
    return standby


def set_primary_setting(cluster: LocalCluster, name: str, value: str | None) -> None:
    """``ALTER SYSTEM SET name = value`` (None: RESET) on a running server, then reload."""
    if value is None:
        statement = sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name))
    else:
        statement = sql.SQL("ALTER SYSTEM SET {} = {}").format(
            sql.Identifier(name), sql.Literal(value)
        )
    _superuser_statements(cluster, statement, sql.SQL("SELECT pg_reload_conf()"))


def _superuser_statements(cluster: LocalCluster, *statements: sql.Composable) -> None:
    conn = psycopg2.connect(cluster.superuser_url(), connect_timeout=10)
    try:
        conn.autocommit = True  # ALTER SYSTEM cannot run in a transaction
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def set_apply_delay(standby: LocalCluster, delay_ms: int) -> None:
    """Change a running standby's ``recovery_min_apply_delay`` (0: replay at once)."""
    set_primary_setting(standby, "recovery_min_apply_delay", f"{delay_ms}ms")


def promote(standby: LocalCluster) -> None:
    """``pg_ctl promote --wait``: the standby ends recovery and accepts writes."""
    result = standby._run("pg_ctl", "promote", "--pgdata", str(standby.datadir), "--wait")
    if result.returncode != 0:
        raise ClusterError(f"pg_ctl promote failed in {standby.datadir}: {result.stderr.strip()}")


def _allow_replication(primary: LocalCluster) -> None:
    hba = primary.datadir / "pg_hba.conf"
    if _REPLICATION_HBA not in hba.read_text():
        with hba.open("a") as handle:
            handle.write(_REPLICATION_HBA)
        _superuser_statements(primary, sql.SQL("SELECT pg_reload_conf()"))


def _base_backup(primary: LocalCluster, datadir: Path, password: str) -> None:
    """``pg_basebackup`` of ``primary`` into ``datadir`` (absent or empty), WAL streamed."""
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    primary._give_to_server_user(datadir)
    secret_dir = Path(tempfile.mkdtemp(prefix=".standby-", dir=datadir.parent))
    try:
        primary._give_to_server_user(secret_dir)
        passfile = secret_dir / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"127.0.0.1:{primary.port}:*:postgres:{password}\n")
        primary._give_to_server_user(passfile)
        result = primary._run(
            "pg_basebackup",
            "--dbname",
            f"host=127.0.0.1 port={primary.port} user=postgres passfile={passfile}",
            "--pgdata",
            str(datadir),
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            "--no-password",  # never a prompt on the terminal: the passfile or nothing
        )
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ClusterError(f"pg_basebackup failed: {lines[-1] if lines else 'no output'}")


def _append_settings(standby: LocalCluster, settings: dict[str, str]) -> None:
    auto = standby.datadir / "postgresql.auto.conf"
    with auto.open("a") as handle:
        for name, value in settings.items():
            escaped = value.replace("'", "''")
            handle.write(f"{name} = '{escaped}'\n")
