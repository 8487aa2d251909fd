"""Per-tenant back-off after PostgreSQL rejected a tenant's credentials (SQLSTATE 28P01).

A tenant whose role password no longer matches what the control plane holds (changed
behind the service's back, or a rotation half done) must not turn every request into a
login attempt: the server log fills with failures, and each attempt costs a backend fork.
The first rejection is forgiven (the caller fetches the credentials again and rebuilds
the engine once: a rotation may just have committed); from the second in a row, the
tenant gets 503 without any login for ``base`` seconds, doubling up to ``cap``. A success
or a tenant change event (credentials rotated, ...) clears the tenant's record.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.observer import Observer

__all__ = ["LoginBackoff", "is_auth_failure"]

DEFAULT_BASE = 15.0
DEFAULT_CAP = 300.0

# psycopg2 has no SQLSTATE for a failed connection attempt (its pgcode is None), so the
# server's message is matched too; PostgreSQL words it so in the C/English locale, which
# is the default of lc_messages on managed services (docs/operations.md says so).
_AUTH_FAILED = re.compile(r"password authentication failed for user")


def is_auth_failure(error: BaseException) -> bool:
    """Whether ``error`` (a DB-API or SQLAlchemy error) is a rejected login."""
    orig = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    if getattr(orig, "pgcode", None) == "28P01" or getattr(orig, "sqlstate", None) == "28P01":
        return True
    return _AUTH_FAILED.search(str(orig)) is not None


@dataclass
class _Record:
    failures: int
    until: float
    # What the control plane said of the tenant when its login last failed (``version`` of
    # TenantCredentials): a change event ends the back-off only if that changed since.
    version: object = None


class LoginBackoff:
    """Consecutive rejected logins per tenant and the time until the next attempt.

    Thread safe: one lock guards the dict, never held during I/O. Holds an entry only
    for tenants whose last login failed, so the hot path never reaches it.
    """

    def __init__(
        self,
        *,
        base: float = DEFAULT_BASE,
        cap: float = DEFAULT_CAP,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self._clock = clock
        self._observer = observer or Observer()
        self._lock = threading.Lock()
        self._records: dict[uuid.UUID, _Record] = {}

    def check(self, tenant_id: uuid.UUID) -> None:
        """Raise TenantUnavailable if the tenant must not try to log in yet."""
        with self._lock:
            record = self._records.get(tenant_id)
            remaining = 0.0 if record is None else record.until - self._clock()
        if remaining > 0:
            raise self._unavailable(remaining)

    def failed(self, tenant_id: uuid.UUID, version: object = None) -> None:
        """Record a rejected login; from the second in a row the tenant backs off.

        ``version``: what the credentials that failed were read as (see ``version_of``).
        """
        now = self._clock()
        delay = 0.0
        with self._lock:
            record = self._records.setdefault(tenant_id, _Record(0, now))
            record.failures += 1
            record.version = version
            if record.failures >= 2:
                delay = min(self.cap, self.base * 2 ** (record.failures - 2))
                record.until = now + delay
        if delay:
            self._observer.login_backoff(delay)

    def succeeded(self, tenant_id: uuid.UUID) -> None:
        """A login worked: forget the tenant's failures."""
        if tenant_id in self._records:  # unlocked peek: the common case has nothing to do
            self.reset(tenant_id)

    def version_of(self, tenant_id: uuid.UUID) -> tuple[bool, object]:
        """Whether the tenant has failed logins on record, and the version they failed with."""
        with self._lock:
            record = self._records.get(tenant_id)
        return (False, None) if record is None else (True, record.version)

    def reset(self, tenant_id: uuid.UUID) -> None:
        """Forget the tenant's failures (a change event may have fixed its credentials)."""
        with self._lock:
            self._records.pop(tenant_id, None)

    def state(self, tenant_id: uuid.UUID) -> tuple[int, float]:
        """The tenant's rejected logins in a row, and the seconds until it may try again."""
        with self._lock:
            record = self._records.get(tenant_id)
            if record is None:
                return 0, 0.0
            return record.failures, max(0.0, record.until - self._clock())

    def unavailable(self, tenant_id: uuid.UUID) -> TenantUnavailable:
        """The 503 for a tenant whose credentials were rejected, with its Retry-After."""
        with self._lock:
            record = self._records.get(tenant_id)
            remaining = 0.0 if record is None else record.until - self._clock()
        return self._unavailable(remaining)

    @staticmethod
    def _unavailable(remaining: float) -> TenantUnavailable:
        return TenantUnavailable(
            "the tenant's database credentials were rejected",
            retry_after=max(1, math.ceil(remaining)),
            code="credentials_rejected",
        )
