"""Read replicas (``APP_READ_REPLICAS``): which standbys may serve a read right now.

A replica is in the rotation while it answers, is still in recovery (a promoted one has
left its primary's history), and is fresh enough: its staleness is measured, not
guessed. Every ``CHECK_INTERVAL`` the watcher reads the primary's WAL insert position
(a *sample*: everything committed before the moment it was asked lies at or before it)
and each replica's replay position. A replica that has replayed past a sample holds every
commit made before that sample was taken, so at any later instant it is stale by at most
the time since then. ``choose`` compares that bound with ``max_lag`` at the moment of the
read, so a replica that stops replaying, or stops answering the watcher, ages out of the
rotation by itself, without waiting for a probe to fail. A primary that writes nothing
leaves its position unchanged, and a replica that replayed it is not stale at all.

A read with a consistency token (``consistency.py``) is served only by a replica whose
replay position, as last probed, is at or past the token's; replay positions only grow
while in recovery, so the probe's value is a lower bound of the replica's now. No replica
qualifies: the caller reads on the primary.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app import dbwait
from app.dbhosts import single_host
from app.dbwait import discard_if_closed_by_server
from app.tenancy.serving.consistency import lsn_from_text, record_end
from app.tenancy.serving.forks import reset_in_child

__all__ = [
    "CHECK_INTERVAL",
    "Replica",
    "ReplicaRotation",
    "ReplicaWatcher",
    "on_replica",
]

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
"""Seconds between the watcher's probes of each primary and replica."""
PROBE_TIMEOUT = 2
"""Seconds a probe may wait to connect or for an answer (libpq's least connect timeout)."""

_PRIMARY_PROBE = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END, "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END"
)
FLUSH_GRACE = 1.0
"""Seconds within which the primary flushes every commit record (an asynchronous commit's
by the WAL writer, after at most 3 x wal_writer_delay, 0.6 s by default)."""
_REPLICA_PROBE = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"


@dataclass(frozen=True)
class Replica:
    """One standby of a cluster: where it is (host, port, database), never who logs in."""

    cluster: str
    url: sa.URL

    @property
    def name(self) -> str:
        """``host:port/database``, for logs and the admin view (no credentials)."""
        return f"{self.url.host}:{self.url.port or 5432}/{self.url.database or ''}"


def on_replica(url: sa.URL, replica: sa.URL) -> sa.URL:
    """``url`` (its user, password and options) pointed at ``replica``'s host, port, database.

    So the service logs in on a replica exactly as on its primary: the same role and
    password (roles replicate), the same options; only where changes.
    """
    pointed = single_host(url, (replica.host, replica.port))
    return pointed.set(
        database=replica.database or url.database, query={**pointed.query, **replica.query}
    )


@dataclass
class _State:
    """What the watcher last learned of one replica."""

    answering: bool = False
    replay: int | None = None
    # Monotonic time before which every commit of the primary is on the replica.
    fresh_as_of: float | None = None


class ReplicaRotation:
    """Which replicas may serve reads; fed by the watcher, asked by every read.

    Thread safe: ``self._lock`` guards the samples and the states, held for dict and deque
    operations only (``choose`` is on every read's path: no I/O, no logging under it).
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        max_lag: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag = max_lag
        self._clock = clock
        self._lock = threading.Lock()
        self._by_cluster: dict[str, list[Replica]] = {}
        for replica in replicas:
            self._by_cluster.setdefault(replica.cluster, []).append(replica)
        self._states = {replica: _State() for replica in replicas}
        # Per cluster: (when asked, insert position) of the primary, oldest first.
        self._samples: dict[str, deque[tuple[float, int]]] = {
            cluster: deque() for cluster in self._by_cluster
        }
        # Per cluster: (when asked, flush position) of the primary's last sample.
        self._flushed: dict[str, tuple[float, int]] = {}
        self._turn = itertools.count()

    @property
    def replicas(self) -> list[Replica]:
        """Every configured replica."""
        return list(self._states)

    def clusters(self) -> list[str]:
        """The clusters that have replicas."""
        return sorted(self._by_cluster)

    def moment_of(self, wall: dt.datetime) -> float:
        """``wall`` (an aware time, e.g. a row's ``updated_at``) on this rotation's clock."""
        return self._clock() - (dt.datetime.now(dt.UTC) - wall).total_seconds()

    def primary_sample(
        self, cluster: str, asked_at: float, position: int, flushed: int | None = None
    ) -> None:
        """The primary of ``cluster``, asked at ``asked_at``, was at insert ``position``,
        and had flushed up to ``flushed`` (default: all of it)."""
        horizon = asked_at - self.max_lag - 2 * CHECK_INTERVAL - FLUSH_GRACE
        with self._lock:
            samples = self._samples[cluster]
            samples.append((asked_at, record_end(position)))
            self._flushed[cluster] = (asked_at, position if flushed is None else flushed)
            while len(samples) > 1 and samples[0][0] < horizon:
                samples.popleft()

    def _commits_before_locked(self, cluster: str, asked_at: float, position: int) -> int:
        """Where every commit made before ``asked_at`` ends at the latest.

        The insert position bounds them; once FLUSH_GRACE has passed, so does what the
        primary has flushed since (every commit record is flushed by then). That matters
        on an idle primary: records that are not commits (a standby snapshot) can sit
        unflushed in a partial WAL page for ever, never sent to any replica.
        """
        flushed_at, flushed = self._flushed.get(cluster, (asked_at, position))
        if flushed_at - asked_at >= FLUSH_GRACE:
            return min(position, flushed)
        return position

    def probed(self, replica: Replica, *, in_recovery: bool, replay: int | None) -> None:
        """The replica answered: still a standby or not, and how far it has replayed."""
        with self._lock:
            state = self._states[replica]
            if not in_recovery or replay is None:  # promoted, or not replaying yet
                state.answering, state.replay, state.fresh_as_of = in_recovery, None, None
                return
            fresh = None
            for asked_at, position in self._samples[replica.cluster]:
                if self._commits_before_locked(replica.cluster, asked_at, position) <= replay:
                    fresh = asked_at  # samples are in time order: keep the latest
            if fresh is None and state.replay is not None and replay >= state.replay:
                fresh = state.fresh_as_of  # pruned samples: what it held, it still holds
            state.answering, state.replay, state.fresh_as_of = True, replay, fresh

    def failed(self, replica: Replica) -> None:
        """The replica did not answer (a probe, or a read's connection): out until it does."""
        with self._lock:
            state = self._states.get(replica)
            if state is not None:
                state.answering = False

    def choose(
        self, cluster: str, position: int | None = None, *, fresh_after: float | None = None
    ) -> Replica | None:
        """A replica of ``cluster`` in the rotation, or None.

        ``position``: it must have replayed that WAL position; ``fresh_after``: it must hold
        every commit made before that moment (of this rotation's clock). Replicas that
        qualify take turns.
        """
        now = self._clock()
        with self._lock:
            candidates = [
                replica
                for replica in self._by_cluster.get(cluster, ())
                if self._serves(self._states[replica], now, position, fresh_after)
            ]
            if not candidates:
                return None
            return candidates[next(self._turn) % len(candidates)]

    def _serves(
        self, state: _State, now: float, position: int | None, fresh_after: float | None = None
    ) -> bool:
        if not state.answering or state.fresh_as_of is None or state.replay is None:
            return False
        if now - state.fresh_as_of > self.max_lag:
            return False
        if fresh_after is not None and state.fresh_as_of < fresh_after:
            return False
        return position is None or state.replay >= position

    def status(self) -> list[dict[str, Any]]:
        """Each replica: whether it serves reads now, its replay position and staleness bound."""
        now = self._clock()
        with self._lock:
            states = [(replica, _State(**vars(state))) for replica, state in self._states.items()]
        return [
            {
                "cluster": replica.cluster,
                "replica": replica.name,
                "in_rotation": self._serves(state, now, None),
                "answering": state.answering,
                "replay_position": state.replay,
                "lag_at_most": None
                if state.fresh_as_of is None
                else round(now - state.fresh_as_of, 3),
            }
            for replica, state in states
        ]


Probe = Callable[[sa.Engine, str], Any]


class ReplicaWatcher:
    """The worker's thread probing each cluster's primary and replicas every CHECK_INTERVAL.

    ``primaries``: cluster -> the URL to ask its primary's position (the owner's);
    ``replica_urls``: replica -> the URL to probe it with (the same owner, on the replica).
    Each server gets a pool of one connection (bounded waits: ``PROBE_TIMEOUT``), made in
    the thread, so nothing crosses a fork; the thread starts with the worker's first tenant
    request (``start``, idempotent) and stops at ``close``.
    """

    def __init__(
        self,
        rotation: ReplicaRotation,
        primaries: Mapping[str, sa.URL],
        replica_urls: Mapping[Replica, sa.URL],
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rotation = rotation
        self._primaries = dict(primaries)
        self._replica_urls = dict(replica_urls)
        self._interval = interval
        self._clock = clock
        self._engines: dict[sa.URL, sa.Engine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        reset_in_child(self)

    def start(self) -> None:
        """Start probing in a daemon thread, once (every tenant request asks: a lock, no more)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="tenantpool-replicas", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the probes' connections."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=PROBE_TIMEOUT * 2 + self._interval)
        self._dispose(close=True)

    def run_once(self) -> None:
        """Probe every primary, then every replica; failures are recorded, never raised."""
        for cluster, url in self._primaries.items():
            asked_at = self._clock()
            row = self._probe(url, _PRIMARY_PROBE)
            if row is not None and row[0] is not None:
                inserted, flushed = lsn_from_text(row[0]), lsn_from_text(row[1])
                self.rotation.primary_sample(cluster, asked_at, inserted, flushed)
        for replica, url in self._replica_urls.items():
            row = self._probe(url, _REPLICA_PROBE)
            if row is None:
                self.rotation.failed(replica)
                continue
            in_recovery, replay = row
            self.rotation.probed(
                replica,
                in_recovery=bool(in_recovery),
                replay=None if replay is None else lsn_from_text(replay),
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            self.run_once()
            self._stop.wait(max(0.0, self._interval - (self._clock() - started)))

    def _probe(self, url: sa.URL, query: str) -> Any:
        try:
            with self._engine(url).connect() as connection:
                return connection.exec_driver_sql(query).one()
        except sa.exc.SQLAlchemyError as error:
            logger.warning(
                "replica watcher: %s:%s did not answer (%s)",
                url.host,
                url.port,
                type(getattr(error, "orig", error)).__name__,
            )
            return None

    def _engine(self, url: sa.URL) -> sa.Engine:
        engine = self._engines.get(url)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_size=1,
                max_overflow=0,
                pool_timeout=PROBE_TIMEOUT,
                connect_args={
                    "application_name": f"tp:replicas:{os.getpid()}",
                    **dbwait.connect_args(connect_timeout=PROBE_TIMEOUT, io_timeout=PROBE_TIMEOUT),
                },
            )
            sa.event.listen(engine, "checkout", discard_if_closed_by_server)
            self._engines[url] = engine
        return engine

    def _dispose(self, *, close: bool) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose(close=close)

    def _reset_after_fork(self) -> None:
        """In a forked child: no thread runs there, and the connections are the parent's."""
        self._lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self._dispose(close=False)
