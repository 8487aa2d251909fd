"""Hot standbys of a LocalCluster, and failover by hand: for tests and local experiments.

``make_standby`` copies a running primary with ``pg_basebackup -R`` (streaming, a
``standby.signal``, and ``cluster_name`` as the walreceiver's ``application_name``, which
``synchronous_standby_names`` matches), optionally synchronous or delayed
(``recovery_min_apply_delay``, for read replicas that lag); ``require_synchronous`` makes the
primary wait for it (``ANY 1``); ``promote`` is ``pg_ctl promote``; ``demote_in_place``
leaves a server up but read-only (``default_transaction_read_only``), as an old primary is
after a failover done around it; ``set_setting`` changes a running server's setting. Not
Patroni: nothing here decides anything, the caller does.

The replication password reaches pg_basebackup and the walreceiver through a password
file beside the standby's data directory (readable by the server user only), never a
command line or a log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
from psycopg2 import sql

from app.dev.cluster import SUPERUSER, LocalCluster
from app.dev.errors import ClusterError

__all__ = [
    "demote_in_place",
    "make_standby",
    "promote",
    "replication_state",
    "require_synchronous",
    "set_apply_delay",
    "set_setting",
]

_REPLICATION_HBA = "host    replication    all    127.0.0.1/32    scram-sha-256\n"


def make_standby(
    primary: LocalCluster,
    datadir: Path,
    *,
    name: str = "standby",
    port: int | None = None,
    synchronous: bool = False,
    apply_delay_ms: int | None = None,
    max_connections: int = 100,
    extra_settings: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> LocalCluster:
    """A started hot standby of ``primary`` in ``datadir``, streaming as ``name``.

    ``max_connections`` must be at least the primary's (PostgreSQL refuses to start a hot
    standby with fewer). ``synchronous``: the primary's commits wait for it from now on;
    ``apply_delay_ms``: it replays what it receives that much later. Returns once the primary
    sees it streaming.
    """
    _allow_replication(primary)
    password = primary.superuser_password
    if password is None:
        raise ClusterError("the primary's superuser password is unknown")
    standby = LocalCluster(datadir, bindir=primary.bindir, superuser_password=password)
    _base_backup(primary, standby, name, password)
    settings = {"cluster_name": name, "hot_standby": "on", "hot_standby_feedback": "on"}
    if apply_delay_ms is not None:
        settings["recovery_min_apply_delay"] = f"{apply_delay_ms}ms"
    standby.start(
        port, max_connections=max_connections, extra_settings={**settings, **(extra_settings or {})}
    )
    _wait_for(lambda: replication_state(primary, name) is not None, timeout, f"{name} streaming")
    if synchronous:
        require_synchronous(primary, name, timeout=timeout)
    return standby


def _base_backup(primary: LocalCluster, standby: LocalCluster, name: str, password: str) -> None:
    """``pg_basebackup -R`` of ``primary`` into the standby's (new) data directory."""
    datadir = standby.datadir
    passfile = datadir.parent / f".pgpass-{name}"
    passfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"127.0.0.1:{primary.port}:*:{SUPERUSER}:{password}\n")
    # The cluster's own helpers: the server user must reach and own them when we are root.
    standby._check_traversable(datadir.parent)
    datadir.mkdir(mode=0o700)
    standby._give_to_server_user(datadir)
    standby._give_to_server_user(passfile)
    conninfo = (
        f"host=127.0.0.1 port={primary.port} user={SUPERUSER} passfile={passfile} "
        f"application_name={name}"
    )
    # The cluster's own runner: its binaries, as its server user when we are root.
    result = primary._run(
        "pg_basebackup",
        "--pgdata",
        str(datadir),
        "--dbname",
        conninfo,
        "--write-recovery-conf",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--no-sync",
        "--no-password",  # never a prompt on a terminal: the password file or nothing
    )
    if result.returncode != 0:
        raise ClusterError(f"pg_basebackup failed: {result.stderr.strip().splitlines()[-1:]}")


def require_synchronous(primary: LocalCluster, *names: str, timeout: float = 30.0) -> None:
    """Commits on ``primary`` wait for one of ``names`` (``ANY 1``) from now on.

    Set with ALTER SYSTEM, so a ``-c synchronous_standby_names`` on the command line would
    win over it; the primary's ``synchronous_commit`` must not be ``off``.
    """
    standbys = ", ".join(f'"{name}"' for name in names)
    _execute(primary, f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({standbys})'")
    _execute(primary, "SELECT pg_reload_conf()")
    _wait_for(
        lambda: any(replication_state(primary, name) == "quorum" for name in names),
        timeout,
        "a synchronous standby",
    )


def promote(standby: LocalCluster) -> None:
    """``pg_ctl promote --wait``: the standby takes writes when this returns."""
    result = standby._run("pg_ctl", "promote", "--pgdata", str(standby.datadir), "--wait")
    if result.returncode != 0:
        raise ClusterError(f"pg_ctl promote failed: {result.stderr.strip()}")


def demote_in_place(server: LocalCluster) -> None:
    """Leave ``server`` up but refusing writes: ``default_transaction_read_only`` on, reloaded.

    Sessions already open take the new default at their next statement, and PostgreSQL
    reports the change to each client (a ParameterStatus message).
    """
    _execute(server, "ALTER SYSTEM SET default_transaction_read_only = on")
    _execute(server, "SELECT pg_reload_conf()")


def set_setting(cluster: LocalCluster, name: str, value: str | None) -> None:
    """``ALTER SYSTEM SET name = value`` (None: RESET) on a running server, then reload."""
    if value is None:
        statement = sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name))
    else:
        statement = sql.SQL("ALTER SYSTEM SET {} = {}").format(
            sql.Identifier(name), sql.Literal(value)
        )
    _execute(cluster, statement)
    _execute(cluster, "SELECT pg_reload_conf()")


def set_apply_delay(standby: LocalCluster, delay_ms: int) -> None:
    """Change a running standby's ``recovery_min_apply_delay`` (0: replay at once)."""
    set_setting(standby, "recovery_min_apply_delay", f"{delay_ms}ms")


def replication_state(primary: LocalCluster, name: str) -> str | None:
    """``sync_state`` of the standby ``name`` as the primary sees it streaming; else None."""
    rows = _execute(
        primary,
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s "
        "AND state = 'streaming'",
        (name,),
    )
    return str(rows[0][0]) if rows else None


def _allow_replication(primary: LocalCluster) -> None:
    hba = primary.datadir / "pg_hba.conf"
    if _REPLICATION_HBA not in hba.read_text():
        with hba.open("a") as handle:
            handle.write(_REPLICATION_HBA)
        _execute(primary, "SELECT pg_reload_conf()")


def _execute(
    cluster: LocalCluster, statement: str | sql.Composable, params: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(cluster.superuser_url(), connect_timeout=10)
    try:
        connection.autocommit = True  # ALTER SYSTEM cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}")
        time.sleep(0.05)
