"""LoginBackoff with a fake clock; is_auth_failure on real error shapes."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
import sqlalchemy as sa

from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.backoff import LoginBackoff, is_auth_failure
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backoff(clock: FakeClock) -> LoginBackoff:
    return LoginBackoff(base=15, cap=60, clock=clock)


def test_backoff_first_rejection_allows_one_more_attempt(backoff: LoginBackoff) -> None:
    tenant = uuid.uuid4()

    backoff.failed(tenant)

    backoff.check(tenant)  # the rebuild with credentials fetched again may go ahead


def test_backoff_second_rejection_blocks_tenant_for_base_seconds(
    backoff: LoginBackoff, clock: FakeClock
) -> None:
    tenant = uuid.uuid4()
    backoff.failed(tenant)
    backoff.failed(tenant)

    with pytest.raises(TenantUnavailable) as raised:
        backoff.check(tenant)
    assert raised.value.code == "credentials_rejected"
    assert raised.value.retry_after == 15
    clock.now += 15.5
    backoff.check(tenant)


def test_backoff_doubles_and_is_capped(backoff: LoginBackoff, clock: FakeClock) -> None:
    tenant = uuid.uuid4()
    waits = []
    for _ in range(6):
        backoff.failed(tenant)
        waits.append(backoff.unavailable(tenant).retry_after)

    assert waits == [1, 15, 30, 60, 60, 60]


def test_backoff_blocks_only_the_failing_tenant(backoff: LoginBackoff) -> None:
    broken, healthy = uuid.uuid4(), uuid.uuid4()
    backoff.failed(broken)
    backoff.failed(broken)

    backoff.check(healthy)
    with pytest.raises(TenantUnavailable):
        backoff.check(broken)


@pytest.mark.parametrize("clear", ["succeeded", "reset"])
def test_backoff_success_or_event_clears_tenant(backoff: LoginBackoff, clear: str) -> None:
    tenant = uuid.uuid4()
    backoff.failed(tenant)
    backoff.failed(tenant)

    getattr(backoff, clear)(tenant)

    backoff.check(tenant)
    backoff.failed(tenant)
    backoff.check(tenant)  # counting starts again: the first rejection is forgiven


def test_is_auth_failure_recognises_rejected_login(owner_url: str) -> None:
    wrong = sa.make_url(owner_url).set(password="not-the-password")
    with pytest.raises(psycopg2.OperationalError) as raw:
        psycopg2.connect(wrong.render_as_string(hide_password=False))
    engine = sa.create_engine(wrong.set(drivername="postgresql+psycopg2"))
    with pytest.raises(sa.exc.OperationalError) as wrapped:
        engine.connect()

    assert is_auth_failure(raw.value)
    assert is_auth_failure(wrapped.value)


def test_is_auth_failure_ignores_other_connection_errors() -> None:
    engine = sa.create_engine("postgresql+psycopg2://u:p@127.0.0.1:1/x")
    with pytest.raises(sa.exc.OperationalError) as refused:
        engine.connect()

    assert not is_auth_failure(refused.value)
    assert not is_auth_failure(RuntimeError("password"))
