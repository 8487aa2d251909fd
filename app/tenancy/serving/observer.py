"""What the tenancy layer reports as it works; ``app.metrics`` turns it into Prometheus series.

The tenancy layer knows nothing of Prometheus: it calls an ``Observer``, whose methods do
nothing unless a subclass overrides them. Each call is cheap and never raises; callers may
hold their own lock while calling (an observer takes no lock of theirs).
"""

from __future__ import annotations


class Observer:
    """No-op hooks; override the ones you want to record."""

    def engine_created(self) -> None:
        """A tenant engine was created and registered."""

    def engines_evicted(self, reason: str, count: int) -> None:
        """``count`` tenant engines were disposed (``idle``, ``lru``, ``auth``, an event...)."""

    def budget_wait(self, seconds: float) -> None:
        """A new connection waited ``seconds`` for a slot of the connection budget."""

    def budget_in_use(self, count: int) -> None:
        """The connection budget now has ``count`` slots taken."""

    def login_rejected(self) -> None:
        """PostgreSQL rejected a tenant role's credentials (SQLSTATE 28P01)."""

    def fair_share(self, outcome: str) -> None:
        """A tenant request was ``admitted`` at once, ``waited`` for its share, or ``rejected``."""
