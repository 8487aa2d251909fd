"""The replica rotation's arithmetic, with a fake clock (the watcher's I/O is tested on real
standbys in tests/db/test_replica_reads.py)."""

from __future__ import annotations

import sqlalchemy as sa

from app.tenancy.serving.replicas import Replica, ReplicaRotation, on_replica

R1 = Replica("default", sa.make_url("postgresql://r1:5432/tp"))
R2 = Replica("default", sa.make_url("postgresql://r2:5432/tp"))
OTHER = Replica("eu", sa.make_url("postgresql://r3:5432/tp"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _rotation(clock: Clock, *replicas: Replica, max_lag: float = 5.0) -> ReplicaRotation:
    return ReplicaRotation(list(replicas) or [R1], max_lag=max_lag, clock=clock)


def test_replica_unprobed_is_not_in_rotation() -> None:
    rotation = _rotation(Clock())
    assert rotation.choose("default") is None
    assert rotation.choose("nowhere") is None


def test_replica_fresh_serves_and_ages_out_without_news() -> None:
    clock = Clock()
    rotation = _rotation(clock)
    rotation.primary_sample("default", clock.now, 1000)
    rotation.probed(R1, in_recovery=True, replay=1000)
    assert rotation.choose("default") is R1
    clock.now += 5.0
    assert rotation.choose("default") is R1  # stale by at most 5 s: the bound
    clock.now += 0.01
    assert rotation.choose("default") is None  # no probe said more since


def test_replica_staleness_is_measured_from_the_sample_it_replayed() -> None:
    clock = Clock()
    rotation = _rotation(clock, max_lag=2.0)
    rotation.primary_sample("default", 100.0, 1000)
    rotation.primary_sample("default", 101.0, 2000)
    rotation.primary_sample("default", 102.0, 3000)
    clock.now = 102.5
    rotation.probed(R1, in_recovery=True, replay=2500)  # has 101's commits, not 102's
    assert rotation.status()[0]["lag_at_most"] == 1.5
    assert rotation.choose("default") is R1
    clock.now = 103.01
    assert rotation.choose("default") is None


def test_replica_of_an_idle_primary_is_not_stale() -> None:
    clock = Clock()
    rotation = _rotation(clock, max_lag=1.0)
    for _ in range(10):
        clock.now += 1.0
        rotation.primary_sample("default", clock.now, 5000)  # nothing written
        rotation.probed(R1, in_recovery=True, replay=5000)
    assert rotation.choose("default") is R1


def test_replica_promoted_or_down_leaves_and_comes_back_when_fresh() -> None:
    clock = Clock()
    rotation = _rotation(clock)
    rotation.primary_sample("default", clock.now, 1000)
    rotation.probed(R1, in_recovery=False, replay=1000)  # promoted
    assert rotation.choose("default") is None
    rotation.probed(R1, in_recovery=True, replay=1000)
    assert rotation.choose("default") is R1
    rotation.failed(R1)
    assert rotation.choose("default") is None
    rotation.probed(R1, in_recovery=True, replay=1000)
    assert rotation.choose("default") is R1


def test_replica_token_position_must_be_replayed() -> None:
    clock = Clock()
    rotation = _rotation(clock, R1, R2)
    rotation.primary_sample("default", clock.now, 1000)
    rotation.probed(R1, in_recovery=True, replay=1000)
    rotation.probed(R2, in_recovery=True, replay=1200)
    assert rotation.choose("default", 1100) is R2
    assert rotation.choose("default", 1200) is R2
    assert rotation.choose("default", 1201) is None  # the primary then
    assert {rotation.choose("default") for _ in range(4)} == {R1, R2}  # turns


def test_replica_serves_a_changed_tenant_only_once_fresh_after_the_change() -> None:
    clock = Clock()
    rotation = _rotation(clock)
    rotation.primary_sample("default", 100.0, 1000)
    rotation.primary_sample("default", 101.0, 2000)
    clock.now = 101.5
    rotation.probed(R1, in_recovery=True, replay=1500)  # fresh as of 100.0
    assert rotation.choose("default", fresh_after=100.0) is R1
    assert rotation.choose("default", fresh_after=100.5) is None  # changed later: primary
    rotation.probed(R1, in_recovery=True, replay=2000)
    assert rotation.choose("default", fresh_after=100.5) is R1


def test_replica_idle_primary_unflushed_tail_is_not_lag_after_the_flush_grace() -> None:
    """A standby snapshot stuck in a partial WAL page: inserted, never flushed, never sent."""
    clock = Clock()
    rotation = _rotation(clock, max_lag=5.0)
    rotation.primary_sample("default", 100.0, 5000 + 184, flushed=5000)
    rotation.probed(R1, in_recovery=True, replay=5000)
    assert rotation.choose("default") is None  # it may still flush a commit there
    clock.now = 101.0
    rotation.primary_sample("default", 101.0, 5000 + 184, flushed=5000)
    rotation.probed(R1, in_recovery=True, replay=5000)
    assert rotation.choose("default") is R1  # a second on: no commit can be in that tail
    assert rotation.status()[0]["lag_at_most"] == 1.0


def test_replica_of_another_cluster_is_never_chosen() -> None:
    clock = Clock()
    rotation = _rotation(clock, R1, OTHER)
    rotation.primary_sample("eu", clock.now, 10)
    rotation.probed(OTHER, in_recovery=True, replay=10)
    assert rotation.choose("default") is None
    assert rotation.choose("eu") is OTHER


def test_replica_page_header_after_the_last_record_is_not_lag() -> None:
    """An idle primary whose insert position sits just past a page header."""
    clock = Clock()
    rotation = _rotation(clock)
    rotation.primary_sample("default", clock.now, 3 * 8192 + 24)
    rotation.probed(R1, in_recovery=True, replay=3 * 8192)
    assert rotation.choose("default") is R1


def test_replica_url_keeps_who_and_options_changes_where() -> None:
    primary = sa.make_url(
        "postgresql+psycopg2://t_ab:pw@/tp?host=p1:5432&host=p2:5432"
        "&target_session_attrs=read-write&sslmode=require"
    )
    url = on_replica(primary, sa.make_url("postgresql://r1:6432/tp_copy"))
    assert (url.username, url.password, url.host, url.port) == ("t_ab", "pw", "r1", 6432)
    assert url.database == "tp_copy"
    assert dict(url.query) == {"sslmode": "require"}
