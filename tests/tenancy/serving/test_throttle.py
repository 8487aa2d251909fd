"""The per-client allowance of failed authentications, on a fake clock."""

from __future__ import annotations

import pytest

from app.tenancy.errors import TooManyAuthFailures
from app.tenancy.serving.throttle import AuthThrottle
from tests.support import FakeClock


def test_throttle_allows_limit_failures_then_refuses_with_retry_after() -> None:
    throttle = AuthThrottle(3, period=60, clock=FakeClock())
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")

    with pytest.raises(TooManyAuthFailures) as raised:
        throttle.check("10.0.0.1")
    assert raised.value.retry_after == 20  # one failure back every 60 / 3 s


def test_throttle_refills_with_time() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(3, period=60, clock=clock)
    for _ in range(3):
        throttle.failed("10.0.0.1")

    clock.advance(20)
    throttle.check("10.0.0.1")  # one failure's worth is back
    throttle.failed("10.0.0.1")
    with pytest.raises(TooManyAuthFailures):
        throttle.check("10.0.0.1")
    clock.advance(60)
    throttle.check("10.0.0.1")
    assert throttle.clients() == 0  # full again: forgotten


def test_throttle_clients_are_independent() -> None:
    throttle = AuthThrottle(1, clock=FakeClock())
    throttle.failed("10.0.0.1")
    with pytest.raises(TooManyAuthFailures):
        throttle.check("10.0.0.1")
    throttle.check("10.0.0.2")


def test_throttle_memory_is_bounded() -> None:
    throttle = AuthThrottle(5, max_clients=100, clock=FakeClock())
    for number in range(1000):
        throttle.failed(f"10.0.{number // 256}.{number % 256}")
    assert throttle.clients() == 100
