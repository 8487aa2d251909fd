"""The clusters tenants are placed on: owner-role engines by name, and database identity.

``tenants.cluster`` names a cluster; ``APP_CLUSTERS`` maps names to DSNs carrying each
cluster's owner credentials (non-superuser, CREATEROLE), and ``default`` is the control
plane's own database unless ``APP_CLUSTERS`` names it too. Tenant engines take the same DSN
with the tenant's role and password instead (``engines.py``). A ``default`` DSN without
credentials only routes tenants to the control plane's database (through PgBouncer, say):
owner work there goes through the control-plane engine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from app.dbfailover import follow_writable
from app.tenancy.errors import UnknownCluster

DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which server (``pg_control_system()``) and which database a connection reached.

    Two cluster names may reach one database (``default`` direct and through PgBouncer),
    and two databases may share one server, whose roles are server-wide.
    """

    system_identifier: int
    database: str

    def same_server(self, other: DatabaseIdentity) -> bool:
        return self.system_identifier == other.system_identifier


def database_identity(connection: sa.Connection) -> DatabaseIdentity:
    """The identity of the database ``connection`` is on (readable by any role)."""
    row = connection.execute(
        sa.text("SELECT system_identifier, current_database() FROM pg_control_system()")
    ).one()
    return DatabaseIdentity(int(row[0]), str(row[1]))


class Clusters:
    """Owner-role engines of the clusters, by name. Thread safe.

    The control-plane engine serves every name whose DSN is the control plane's own, so
    the usual single-cluster set-up opens nothing more. Other engines use no pool (owner
    work on a data cluster is rare: creating, moving, removing tenants, migrating), so
    they hold no connection between uses and nothing crosses a fork.
    """

    def __init__(
        self,
        control: sa.Engine,
        urls: Mapping[str, sa.URL],
        *,
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        if DEFAULT_CLUSTER not in urls:
            raise ValueError("urls must name the default cluster")
        self.control = control
        self._urls = dict(urls)
        # psycopg2 arguments of the owner engines (timeouts, keepalives: app.dbwait).
        self._connect_args = dict(connect_args or {})
        self._lock = threading.Lock()
        self._engines: dict[str, sa.Engine] = {}

    @classmethod
    def single(cls, control: sa.Engine) -> Clusters:
        """Just the control plane's database, as ``default`` (no ``APP_CLUSTERS``)."""
        return cls(control, {DEFAULT_CLUSTER: control.url})

    @classmethod
    def configured(
        cls,
        control: sa.Engine,
        dsns: Mapping[str, str],
        *,
        connect_args: Mapping[str, Any] | None = None,
    ) -> Clusters:
        """The clusters of ``APP_CLUSTERS`` (``dsns``) beside the control plane's."""
        return cls(control, cluster_urls(control.url, dsns), connect_args=connect_args)

    @property
    def names(self) -> list[str]:
        """Every configured cluster name, ``default`` included, sorted."""
        return sorted(self._urls)

    def url(self, name: str) -> sa.URL:
        """The owner DSN of ``name``; raises UnknownCluster."""
        try:
            return self._urls[name]
        except KeyError:
            raise UnknownCluster(
                f"no cluster named {name!r}: configured are {', '.join(self.names)} "
                "(add it to APP_CLUSTERS)"
            ) from None

    def is_control_database(self, name: str) -> bool:
        """Whether ``name`` is the control plane's own database; raises UnknownCluster."""
        return is_control_database(name, self.url(name), self.control.url)

    def owner_databases(self) -> list[tuple[str, sa.URL]]:
        """(label, owner DSN) of every database holding tenant tables, the control plane first.

        What ``flask db`` migrates and ``flask tenancy check`` checks.
        """
        found = [("control plane", self.control.url)]
        for name in self.names:
            if not self.is_control_database(name):
                found.append((f"cluster {name}", self._urls[name]))
        return found

    def engine(self, name: str) -> sa.Engine:
        """The owner-role engine of ``name``; raises UnknownCluster."""
        url = self.url(name)
        if self.is_control_database(name):
            return self.control
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = sa.create_engine(url, poolclass=NullPool, connect_args=self._connect_args)
                follow_writable(engine)  # a demoted primary's error is a lost connection
                self._engines[name] = engine
            return engine

    @contextlib.contextmanager
    def transaction(self, name: str, control: sa.Connection) -> Iterator[sa.Connection]:
        """An owner transaction on ``name``: ``control``'s own if it is the same database.

        Else a transaction of its own, committed when the block ends (before ``control``'s),
        so a change on a data cluster and its record in the control plane commit a moment
        apart, the cluster's first.
        """
        engine = self.engine(name)
        if engine is self.control:
            yield control
            return
        with engine.begin() as data:
            yield data

    def identity(self, name: str) -> DatabaseIdentity:
        """Which server and database ``name`` reaches (one query as the owner)."""
        with self.engine(name).connect() as connection:
            return database_identity(connection)

    def dispose(self) -> None:
        """Dispose the data-cluster engines (not the control plane's)."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()


def cluster_urls(control_url: str | sa.URL, dsns: Mapping[str, str]) -> dict[str, sa.URL]:
    """Every cluster's DSN by name: ``dsns`` (``APP_CLUSTERS``) and ``default``.

    The one place that says which database a cluster is: ``default`` is the control plane's
    own database unless ``dsns`` names it. Tenant engines connect there with the tenant's
    role; owner work uses the DSN's own credentials.
    """
    urls = {name: sa.make_url(dsn) for name, dsn in dsns.items()}
    urls.setdefault(DEFAULT_CLUSTER, sa.make_url(control_url))
    return urls


def owner_urls(control_url: str | sa.URL, dsns: Mapping[str, str]) -> dict[str, sa.URL]:
    """Where each cluster's owner work and gateway log in: its DSN, or the control plane's."""
    control = sa.make_url(control_url)
    return {
        name: control if is_control_database(name, url, control) else url
        for name, url in cluster_urls(control, dsns).items()
    }


def is_control_database(name: str, url: sa.URL, control_url: sa.URL) -> bool:
    """Whether the cluster ``name`` at ``url`` is the control plane's own database.

    Its DSN is the control plane's, or it is ``default`` without credentials: a way for
    tenants to reach that database (through PgBouncer, say) while owner work goes through
    the control-plane engine.
    """
    return _same_dsn(url, control_url) or (name == DEFAULT_CLUSTER and not url.username)


def _same_dsn(left: sa.URL, right: sa.URL) -> bool:
    return left.render_as_string(hide_password=False) == right.render_as_string(hide_password=False)
