"""Fair share of a worker's request threads between tenants, work-conserving.

A gthread worker has ``threads`` request threads. A tenant flooding slow requests would
otherwise hold all of them, and every other tenant's requests would queue behind its own
in gunicorn (measured: a quiet tenant's p99 from 4.7 ms to 1.6 s). So, per worker:

- a tenant may run at most ``share`` requests at once while another tenant is present
  (has a request in this worker, or had one within ``presence`` seconds);
- alone, a tenant may use every thread: nobody waits for them, so nothing is held back;
- a request over its tenant's share waits (holding its thread, but no database
  connection: the wait comes before ``Tenancy.open_session``) for one of its tenant's
  requests to finish, at most ``wait`` seconds, and only while a thread is free; once
  every thread is taken, someone may be queued for one behind it, so it gives its own up
  at once: ``TenantOverShare``, a 429 with ``Retry-After``.

Other tenants never wait here: below its share a request is admitted at once. The share
bounds, per worker, how many connections (of its pool, of the connection budget, of the
gateway pool) one tenant holds while others are served: see docs/operations.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from app.presence import PRESENCE, Presence
from app.tenancy.errors import TenantOverShare
from app.tenancy.serving.observer import Observer

__all__ = ["FairShare"]


class FairShare:
    """Admission of a worker's tenant requests. Thread safe.

    ``self._cond`` (one Condition) guards the counts and the presence list; held for
    dict operations only (and while waiting, released). Every change wakes the waiters,
    which look again. Memory: a count per tenant with requests in flight, and the tenants
    seen within ``presence`` seconds, pruned as time passes.
    """

    def __init__(
        self,
        threads: int,
        share: int,
        *,
        wait: float,
        presence: float = PRESENCE,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        if not 1 <= share <= threads:
            raise ValueError(f"share must be between 1 and threads ({threads}), got {share}")
        self.threads = threads
        self.share = share
        self.wait = wait
        self._clock = clock
        self._observer = observer or Observer()
        self._cond = threading.Condition(threading.Lock())
        self._running: dict[uuid.UUID, int] = {}
        self._waiting: dict[uuid.UUID, int] = {}
        self._in_flight = 0  # admitted and waiting requests: each holds a thread
        self._seen = Presence(presence, clock)

    def enter(self, tenant_id: uuid.UUID) -> None:
        """Admit a request of the tenant, maybe after a wait; ``leave`` must follow.

        Raises TenantOverShare (and then no ``leave`` is due) when the tenant is over its
        share and no slot of its own freed up in time, or every thread got taken.
        """
        with self._cond:
            self._in_flight += 1
            self._cond.notify_all()  # waiters give up if this took the last thread
            if self._admissible_locked(tenant_id):
                self._admit_locked(tenant_id)
                outcome = "admitted"
            else:
                outcome = self._wait_locked(tenant_id)
        self._observer.fair_share(outcome)
        if outcome == "rejected":
            raise TenantOverShare(
                "this tenant has its share of the service's threads busy; retry later",
                retry_after=1,
            )

    def leave(self, tenant_id: uuid.UUID) -> None:
        """A request admitted by ``enter`` ended (whatever its outcome)."""
        with self._cond:
            self._in_flight -= 1
            running = self._running.get(tenant_id, 0) - 1
            if running > 0:
                self._running[tenant_id] = running
            else:
                self._running.pop(tenant_id, None)
            self._seen_locked(tenant_id)
            self._cond.notify_all()

    def running(self, tenant_id: uuid.UUID) -> int:
        """Requests of the tenant admitted and not yet left."""
        with self._cond:
            return self._running.get(tenant_id, 0)

    def waiting(self, tenant_id: uuid.UUID) -> int:
        """Requests of the tenant waiting for its share now."""
        with self._cond:
            return self._waiting.get(tenant_id, 0)

    def _wait_locked(self, tenant_id: uuid.UUID) -> str:
        self._waiting[tenant_id] = self._waiting.get(tenant_id, 0) + 1
        deadline = self._clock() + self.wait
        try:
            while self._in_flight < self.threads:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                woken = self._cond.wait(remaining)
                if self._admissible_locked(tenant_id):
                    self._admit_locked(tenant_id)
                    return "waited"
                if not woken:  # timed out (a test's clock may not have moved)
                    break
        finally:
            waiting = self._waiting[tenant_id] - 1
            if waiting:
                self._waiting[tenant_id] = waiting
            else:
                del self._waiting[tenant_id]
        self._in_flight -= 1
        self._cond.notify_all()
        return "rejected"

    def _admissible_locked(self, tenant_id: uuid.UUID) -> bool:
        if self._running.get(tenant_id, 0) < self.share:
            return True
        return not self._others_present_locked(tenant_id)

    def _others_present_locked(self, tenant_id: uuid.UUID) -> bool:
        if len(self._running) - (tenant_id in self._running) > 0:
            return True
        if len(self._waiting) - (tenant_id in self._waiting) > 0:
            return True
        return self._seen.others_than(tenant_id)

    def _admit_locked(self, tenant_id: uuid.UUID) -> None:
        self._running[tenant_id] = self._running.get(tenant_id, 0) + 1
        self._seen_locked(tenant_id)

    def _seen_locked(self, tenant_id: uuid.UUID) -> None:
        self._seen.saw(tenant_id)
