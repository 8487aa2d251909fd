"""TenantActivity with a fake clock: in flight, recent windows, the busiest tenants, bounds."""

from __future__ import annotations

import uuid

import pytest

from app.tenancy.serving.activity import DEDICATED, SHARED, TenantActivity
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=6000.0)  # on a window boundary (window 60 s)


@pytest.fixture
def activity(clock: FakeClock) -> TenantActivity:
    return TenantActivity(window=60, retention=600, max_entries=3, clock=clock, wall=clock)


def _request(
    activity: TenantActivity, tenant: uuid.UUID, status: int, way: str = DEDICATED
) -> None:
    activity.started(tenant)
    activity.session_opened(tenant, way, 0.01)
    activity.finished(tenant, status, way)


def test_activity_counts_a_request_in_flight_until_it_finishes(activity: TenantActivity) -> None:
    tenant = uuid.uuid4()
    activity.started(tenant)
    activity.session_opened(tenant, SHARED, 0.5)

    during = activity.snapshot(tenant)
    activity.finished(tenant, 200, SHARED)
    after = activity.snapshot(tenant)

    assert (during.in_flight, during.shared_in_use) == (1, 1)
    assert (after.in_flight, after.shared_in_use) == (0, 0)
    assert (after.recent.requests, after.recent.shared, after.recent.dedicated) == (1, 1, 0)
    assert after.recent.pool_wait_seconds == pytest.approx(0.5)


def test_activity_sorts_answers_into_client_and_server_errors(activity: TenantActivity) -> None:
    tenant = uuid.uuid4()
    for status in (200, 201, 404, 422, 503):
        _request(activity, tenant, status)
    activity.started(tenant)
    activity.finished(tenant, None, None)  # ended without an answer

    recent = activity.snapshot(tenant).recent

    assert (recent.requests, recent.client_errors, recent.server_errors) == (6, 2, 2)


def test_activity_recent_spans_this_window_and_the_one_before(
    activity: TenantActivity, clock: FakeClock
) -> None:
    tenant = uuid.uuid4()
    _request(activity, tenant, 200)
    clock.advance(60)
    _request(activity, tenant, 500)

    assert activity.snapshot(tenant).recent.requests == 2
    assert activity.snapshot(tenant).recent_since == 6000.0
    clock.advance(60)
    assert activity.snapshot(tenant).recent.requests == 1
    clock.advance(120)
    assert activity.snapshot(tenant).recent.requests == 0


def test_activity_failed_connection_counts_its_wait_but_holds_nothing(
    activity: TenantActivity,
) -> None:
    tenant = uuid.uuid4()
    activity.started(tenant)
    activity.session_opened(tenant, SHARED, 5.0, opened=False)
    activity.finished(tenant, 503, None)

    snapshot = activity.snapshot(tenant)

    assert (snapshot.shared_in_use, snapshot.recent.shared) == (0, 0)
    assert snapshot.recent.pool_wait_seconds == pytest.approx(5.0)


def test_activity_top_ranks_tenants_per_second(activity: TenantActivity, clock: FakeClock) -> None:
    busy, quiet, waiting = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for _ in range(30):
        _request(activity, busy, 200)
    _request(activity, quiet, 200)
    activity.started(waiting)
    activity.session_opened(waiting, DEDICATED, 12.0, opened=False)
    activity.finished(waiting, 503, None)
    clock.advance(30)  # 60 s of the window before (empty) + 30 s of this one

    by_requests, by_wait = activity.top(2)

    assert [tenant for tenant, _ in by_requests] == [busy, quiet]
    assert by_requests[0][1] == pytest.approx(30 / 90)
    assert by_wait[0] == (waiting, pytest.approx(12.0 / 90))


def test_activity_last_login_and_last_request_are_remembered(
    activity: TenantActivity, clock: FakeClock
) -> None:
    tenant = uuid.uuid4()
    activity.logged_in(tenant)
    clock.advance(5)
    _request(activity, tenant, 200)

    snapshot = activity.snapshot(tenant)

    assert (snapshot.last_login_at, snapshot.last_request_at) == (6000.0, 6005.0)
    assert activity.snapshot(uuid.uuid4()).last_request_at is None


def test_activity_is_bounded_and_keeps_tenants_with_requests_in_flight(
    activity: TenantActivity, clock: FakeClock
) -> None:
    tenants = [uuid.uuid4() for _ in range(5)]
    activity.started(tenants[0])  # stays in flight
    for tenant in tenants[1:]:
        _request(activity, tenant, 200)

    activity.prune()

    assert len(activity) == 3  # max_entries
    assert activity.snapshot(tenants[0]).in_flight == 1
    assert activity.snapshot(tenants[1]).recent.requests == 0  # the oldest idle one went
    clock.advance(601)
    activity.prune()
    assert len(activity) == 1  # only the one in flight outlives the retention
