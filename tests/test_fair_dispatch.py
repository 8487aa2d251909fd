"""Which queued request a gunicorn worker's free thread takes (app/fair_dispatch.py).

The worker itself runs under a real gunicorn in tests/e2e/test_fair_share.py; here the
policy, step by step, with a clock that moves only when told to.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time

import pytest

from app.fair_dispatch import FairQueue, requester
from app.node_share import NodeShare, digest_of
from app.presence import Presence
from tests.support import FakeClock

NOISY, QUIET, OTHER = b"noisy", b"quiet", b"other"


def _queue(threads: int = 4, share: int = 2) -> tuple[FairQueue[str], FakeClock, Presence]:
    clock = FakeClock()
    presence = Presence(1.0, clock)
    return FairQueue(threads, share, presence), clock, presence


def _take_all(queue: FairQueue[str]) -> list[str]:
    taken = []
    while (item := queue.take()) is not None:
        taken.append(item[1])
    return taken


def test_alone_a_requester_may_use_every_thread() -> None:
    queue, _, _ = _queue()
    for n in range(6):
        queue.add(NOISY, f"n{n}")
    assert _take_all(queue) == ["n0", "n1", "n2", "n3"]  # every thread, in order
    assert len(queue) == 2  # the rest wait for a thread, holding none


def test_over_its_share_a_requester_waits_while_another_is_present() -> None:
    queue, _, _ = _queue()
    for n in range(6):
        queue.add(NOISY, f"n{n}")
    queue.add(QUIET, "q0")
    # The quiet request is not behind the flood: it runs with two of the flood's.
    assert sorted(_take_all(queue)) == ["n0", "n1", "q0"]
    queue.done(QUIET)
    # Gone, but present for a second: its thread stays free for its next request.
    assert _take_all(queue) == []
    queue.add(QUIET, "q1")
    assert _take_all(queue) == ["q1"]


def test_a_freed_thread_goes_to_the_requester_with_fewest_running() -> None:
    queue, clock, _ = _queue(threads=3, share=3)
    for n in range(3):
        queue.add(NOISY, f"n{n}")
    assert _take_all(queue) == ["n0", "n1", "n2"]
    queue.add(NOISY, "n3")
    clock.advance(0.01)
    queue.add(QUIET, "q0")  # arrives later, but runs nothing yet
    queue.done(NOISY)
    assert _take_all(queue) == ["q0"]
    queue.done(NOISY)
    assert _take_all(queue) == ["n3"]


def test_among_equals_the_oldest_request_goes_first() -> None:
    queue, clock, _ = _queue(threads=1, share=1)
    queue.add(OTHER, "o0")
    assert _take_all(queue) == ["o0"]
    queue.add(QUIET, "q0")
    clock.advance(0.01)
    queue.add(NOISY, "n0")
    queue.done(OTHER)
    assert _take_all(queue) == ["q0"]


def test_presence_ends_and_the_share_lifts() -> None:
    queue, clock, _ = _queue()
    queue.add(QUIET, "q0")
    assert _take_all(queue) == ["q0"]
    queue.done(QUIET)
    for n in range(4):
        queue.add(NOISY, f"n{n}")
    assert _take_all(queue) == ["n0", "n1"]
    clock.advance(1.5)  # the quiet tenant was last seen over a second ago
    assert _take_all(queue) == ["n2", "n3"]


def test_bounded_memory_forgets_requesters_gone_quiet() -> None:
    queue, clock, presence = _queue()
    for n in range(1000):
        key = f"t{n}".encode()
        queue.add(key, "x")
        assert queue.take() is not None
        queue.done(key)
    clock.advance(2)
    queue.add(NOISY, "n0")
    queue.add(NOISY, "n1")
    queue.add(NOISY, "n2")
    assert len(_take_all(queue)) == 3  # nobody present any more
    assert len(presence) <= 1


def test_share_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and threads"):
        FairQueue(4, 5, Presence())


@pytest.mark.parametrize(
    ("head", "same_as"),
    [
        # Header names are case-insensitive; order and other headers do not matter.
        (b"GET / HTTP/1.1\r\nx-tenant-id: T1\r\nauthorization: Bearer k\r\n\r\n", True),
        (b"GET /v1/users?x=1 HTTP/1.1\r\nAuthorization: Bearer k\r\nX-Tenant-ID: T1\r\n\r\n", True),
        # A forged id with another credential is another requester.
        (b"GET / HTTP/1.1\r\nX-Tenant-ID: T1\r\nAuthorization: Bearer forged\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nX-Tenant-ID: T1\r\n\r\n", False),
        # Headers in a body are not the request's.
        (b"POST / HTTP/1.1\r\nX-Tenant-ID: T2\r\n\r\nX-Tenant-ID: T1\r\n", False),
    ],
)
def test_requester_is_the_claimed_tenant_and_its_credential(head: bytes, same_as: bool) -> None:
    reference = requester(b"GET / HTTP/1.1\r\nX-Tenant-ID: T1\r\nAuthorization: Bearer k\r\n\r\n")
    assert (requester(head) == reference) is same_as


def test_requester_key_is_bounded_whatever_the_headers() -> None:
    head = b"GET / HTTP/1.1\r\nX-Tenant-ID: " + b"x" * 5000 + b"\r\nAuthorization: " + b"y" * 5000
    assert len(requester(head)) <= 64 + 1 + 8


def _workers(node_share: int = 1) -> list[FairQueue[str]]:
    """Two workers' queues over one node's share, as after gunicorn's fork: each with its own
    row (claimed for a live pid) of the same shared memory, and no cap of its own."""
    node = NodeShare(node_share, rows=3)
    queues = []
    for pid in (os.getpid(), os.getppid()):
        worker_node = copy.copy(node)  # what a forked worker holds: its object, shared arrays
        assert worker_node.claim(pid)
        queues.append(FairQueue(4, 4, Presence(1.0, FakeClock()), worker_node))
    return queues


def _heavy_noisy_running(a: FairQueue[str]) -> None:
    """On worker a: the quiet tenant served at once, then one noisy request that took 10 ms
    (heavy: far longer than a typical request), and another noisy one running."""
    a.add(QUIET, "q0")
    assert _take_all(a) == ["q0"]
    a.done(QUIET)
    a.add(NOISY, "n0")
    assert _take_all(a) == ["n0"]
    time.sleep(0.01)
    a.done(NOISY)
    a.add(NOISY, "n1")
    assert _take_all(a) == ["n1"]


def test_node_share_holds_a_heavy_requester_running_in_another_worker() -> None:
    a, b = _workers(node_share=1)
    _heavy_noisy_running(a)
    b.add(NOISY, "n2")
    assert _take_all(b) == []  # b never saw the quiet tenant, nor the noisy one end; the node did
    assert b.held()
    b.add(OTHER, "o0")
    assert _take_all(b) == ["o0"]  # others are not held behind it
    a.done(NOISY)
    assert _take_all(b) == ["n2"]


def test_only_the_node_share_makes_a_worker_look_again_on_a_timer() -> None:
    """A request over this worker's own share waits for one of this worker's requests to end,
    which the worker hears of: no 5 ms rechecks for it."""
    queue = FairQueue(4, 1, Presence(1.0, FakeClock()))
    queue.add(QUIET, "q0")
    queue.add(NOISY, "n0")
    queue.add(NOISY, "n1")
    assert _take_all(queue) == ["q0", "n0"]
    assert not queue.held()  # n1 waits for n0, in this worker
    queue.done(NOISY)
    assert _take_all(queue) == ["n1"]


def test_node_share_spares_a_busy_requester_whose_requests_are_as_quick_as_others() -> None:
    """A hot tenant of many cheap requests (a Zipf head) is not held: only heavy ones are."""
    a, b = _workers(node_share=1)
    for key in (QUIET, NOISY):  # each took about 20 ms
        a.add(key, "first")
        _take_all(a)
        time.sleep(0.02)
        a.done(key)
    a.add(NOISY, "n1")
    assert _take_all(a) == ["n1"]
    b.add(NOISY, "n2")
    assert _take_all(b) == ["n2"]  # over the node's share, but not heavy


def test_node_share_gives_a_freed_slot_to_the_longest_waiting_worker() -> None:
    a, b = _workers(node_share=1)
    _heavy_noisy_running(a)
    b.add(NOISY, "b0")
    time.sleep(0.002)
    a.add(NOISY, "n2")  # after b's
    a.done(NOISY)
    assert _take_all(a) == []  # not a's turn, though its own request just ended
    assert _take_all(b) == ["b0"]
    b.done(NOISY)
    assert _take_all(a) == ["n2"]


def test_node_share_lets_a_requester_alone_use_every_worker() -> None:
    a, b = _workers(node_share=1)
    a.add(NOISY, "n0")
    b.add(NOISY, "n1")
    assert _take_all(a) == ["n0"]
    assert _take_all(b) == ["n1"]
    assert not b.held()


def _worker_that_dies(node: NodeShare) -> None:
    assert node.claim(os.getpid())
    node.started(NOISY)
    node.started(NOISY)


def test_node_share_is_shared_memory_and_a_dead_workers_count_is_reclaimed() -> None:
    node = NodeShare(1, rows=1)
    child = multiprocessing.get_context("fork").Process(target=_worker_that_dies, args=(node,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert node.running(NOISY) == 2  # counted in the child, seen here
    assert node.others_than(QUIET)
    assert node.claim(os.getpid())  # the child's row: its worker is gone
    assert node.running(NOISY) == 0
    assert not node.others_than(QUIET)


def test_node_share_bounds_and_digests() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        NodeShare(0, rows=1)
    assert digest_of(NOISY) == digest_of(b"noisy") != digest_of(QUIET)
    assert digest_of(NOISY) > 0
