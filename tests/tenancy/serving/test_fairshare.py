"""Fair share of a worker's threads: real threads for waits, a fake clock for presence."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest

from app.tenancy.errors import TenantOverShare
from app.tenancy.serving.fairshare import FairShare
from app.tenancy.serving.observer import Observer
from tests.support import FakeClock, eventually

GUARD = 10.0
A, B = uuid.uuid4(), uuid.uuid4()


class Outcomes(Observer):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def fair_share(self, outcome: str) -> None:
        self.counts[outcome] += 1


def _share(
    threads: int = 4, share: int = 2, wait: float = GUARD
) -> tuple[FairShare, FakeClock, Outcomes]:
    clock, outcomes = FakeClock(), Outcomes()
    return FairShare(threads, share, wait=wait, clock=clock, observer=outcomes), clock, outcomes


def _crowd(share: FairShare) -> None:
    """B present with one request, A running its share of two."""
    share.enter(B)
    share.enter(A)
    share.enter(A)


def test_fairshare_tenant_alone_uses_every_thread() -> None:
    share, _, outcomes = _share()
    for _ in range(4):
        share.enter(A)
    assert share.running(A) == 4
    assert outcomes.counts == {"admitted": 4}


def test_fairshare_over_share_is_refused_at_once_when_every_thread_is_taken() -> None:
    share, _, outcomes = _share()
    _crowd(share)
    share.enter(B)  # four threads in use, two of them A's

    with pytest.raises(TenantOverShare) as raised:
        share.enter(A)

    assert raised.value.retry_after == 1
    assert outcomes.counts["rejected"] == 1
    assert share.running(A) == 2


def test_fairshare_other_tenants_never_wait() -> None:
    share, _, _ = _share(threads=8)
    for _ in range(2):
        share.enter(A)
    for _ in range(2):
        share.enter(B)  # below its share: admitted at once, A present or not
    assert share.running(B) == 2


def test_fairshare_over_share_waits_for_its_tenant_while_a_thread_is_free() -> None:
    share, _, outcomes = _share(threads=5)
    _crowd(share)
    admitted = threading.Event()
    waiter = threading.Thread(target=lambda: (share.enter(A), admitted.set()))
    waiter.start()
    assert eventually(lambda: share.waiting(A) == 1, timeout=GUARD)
    assert not admitted.is_set()

    share.leave(A)  # one of A's requests ends: the waiting one takes its place

    assert admitted.wait(GUARD)
    waiter.join(GUARD)
    assert share.running(A) == 2
    assert outcomes.counts["waited"] == 1


def test_fairshare_waiting_request_gives_up_when_the_last_thread_is_taken() -> None:
    share, _, outcomes = _share(threads=5)
    _crowd(share)
    refused = threading.Event()

    def over() -> None:
        try:
            share.enter(A)
        except TenantOverShare:
            refused.set()

    waiter = threading.Thread(target=over)
    waiter.start()
    assert eventually(lambda: share.waiting(A) == 1, timeout=GUARD)

    share.enter(B)  # someone may now queue for a thread: the waiter frees its own

    assert refused.wait(GUARD)
    waiter.join(GUARD)
    assert outcomes.counts["rejected"] == 1


def test_fairshare_wait_is_bounded() -> None:
    share, _, outcomes = _share(threads=8, wait=0.05)
    _crowd(share)
    with pytest.raises(TenantOverShare):
        share.enter(A)
    assert outcomes.counts["rejected"] == 1


def test_fairshare_presence_of_others_fades_and_the_tenant_is_alone_again() -> None:
    share, clock, _ = _share(wait=0.0)
    share.enter(B)
    share.leave(B)  # B was here a moment ago: still present
    share.enter(A)
    share.enter(A)
    with pytest.raises(TenantOverShare):
        share.enter(A)

    clock.advance(1.5)

    share.enter(A)  # alone for over a second: the third thread is A's
    assert share.running(A) == 3


def test_fairshare_left_requests_free_their_slots() -> None:
    share, _, _ = _share()
    for _ in range(3):
        share.enter(A)
        share.leave(A)
    assert share.running(A) == 0


def test_fairshare_share_must_fit_the_threads() -> None:
    with pytest.raises(ValueError, match="share"):
        FairShare(4, 5, wait=0.1)
