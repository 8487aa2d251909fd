"""Which way each tenant is served: dedicated, shared, or the hottest tenants dedicated (mix)."""

from __future__ import annotations

import uuid

import pytest

from app.tenancy.serving.ways import ServingMode, ServingWays
from tests.support import FakeClock

A, B, C = (uuid.uuid4() for _ in range(3))


def _ways(clock: FakeClock, slots: int = 1) -> ServingWays:
    return ServingWays(
        ServingMode.MIX, dedicated_slots=slots, window=1.0, min_requests=3, clock=clock
    )


def _requests(ways: ServingWays, tenant: uuid.UUID, count: int) -> list[bool]:
    return [ways.dedicated(tenant) for _ in range(count)]


def test_ways_dedicated_and_shared_do_not_depend_on_load() -> None:
    dedicated, shared = ServingWays(ServingMode.DEDICATED), ServingWays(ServingMode.SHARED)
    assert all(dedicated.dedicated(uuid.uuid4()) for _ in range(5))
    assert not any(shared.dedicated(uuid.uuid4()) for _ in range(5))


def test_ways_mix_serves_everyone_shared_until_a_window_shows_who_is_hot() -> None:
    clock = FakeClock()
    ways = _ways(clock)
    assert not any(_requests(ways, A, 10))
    clock.advance(1.0)
    assert all(_requests(ways, A, 3))


def test_ways_mix_gives_only_the_busiest_tenants_their_own_engine() -> None:
    clock = FakeClock()
    ways = _ways(clock, slots=2)
    _requests(ways, A, 9)
    _requests(ways, B, 5)
    _requests(ways, C, 4)
    clock.advance(1.0)
    assert ways.dedicated(A)
    assert ways.dedicated(B)
    assert not ways.dedicated(C)


def test_ways_mix_never_logs_in_for_a_trickle() -> None:
    clock = FakeClock()
    ways = _ways(clock)
    _requests(ways, A, 2)  # below min_requests
    clock.advance(1.0)
    assert not ways.dedicated(A)


def test_ways_mix_keeps_the_hot_tenant_on_a_tie() -> None:
    clock = FakeClock()
    ways = _ways(clock)
    _requests(ways, A, 5)
    clock.advance(1.0)
    _requests(ways, B, 5)  # B's first request rolls the window: A is hot
    _requests(ways, A, 5)  # a tie with B
    clock.advance(1.0)
    ways.dedicated(C)  # rolls the window
    assert ways.hot() == frozenset({A})


def test_ways_mix_cools_down_a_tenant_that_stops() -> None:
    clock = FakeClock()
    ways = _ways(clock)
    _requests(ways, A, 5)
    clock.advance(1.0)
    assert ways.dedicated(A)
    clock.advance(1.0)
    _requests(ways, B, 2)  # rolls: A was hot; B stays below min_requests
    clock.advance(1.0)
    assert not ways.dedicated(A)  # rolls: nobody was busy enough
    assert ways.hot() == frozenset()


def test_ways_mix_keeps_a_hot_tenant_hot_across_a_pause_in_the_load() -> None:
    """A pause cuts the last window short: its few requests do not cool the tenant down."""
    clock = FakeClock()
    ways = _ways(clock)
    _requests(ways, A, 5)
    clock.advance(1.0)
    assert ways.dedicated(A)  # rolls: A is hot; then the load stops
    _requests(ways, B, 1)
    clock.advance(7.0)
    assert ways.dedicated(A)  # rolls a whole window late: A stays hot
    assert not ways.dedicated(B)  # a pause makes nobody hot
    clock.advance(1.0)
    assert not ways.dedicated(A)  # rolls on time: A's 1 request was a trickle
    assert ways.hot() == frozenset()


def test_ways_mix_counts_are_emptied_every_window() -> None:
    """Memory is bounded by the tenants of one window, whatever has been seen before."""
    clock = FakeClock()
    ways = _ways(clock)
    for _ in range(50):
        ways.dedicated(uuid.uuid4())
    clock.advance(1.0)
    ways.dedicated(A)
    assert len(ways._counts) == 1


def test_ways_refuse_no_slot() -> None:
    with pytest.raises(ValueError, match="dedicated_slots"):
        ServingWays(ServingMode.MIX, dedicated_slots=0)
