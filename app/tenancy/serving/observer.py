"""What the tenancy layer reports as it works; ``app.metrics`` turns it into Prometheus series.

The tenancy layer knows nothing of Prometheus: it calls an ``Observer``, whose methods do
nothing unless a subclass overrides them. Each call is cheap and never raises; callers may
hold their own lock while calling (an observer takes no lock of theirs). No hook names a
tenant: per-tenant facts go to ``activity.TenantActivity``, never to a metric label.
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

    def login(self) -> None:
        """A new connection logged in as a tenant's own role."""

    def login_backoff(self, seconds: float) -> None:
        """A tenant whose logins keep being rejected backs off for ``seconds``."""

    def decrypt_failed(self) -> None:
        """A stored database password (a tenant's or a gateway's) could not be decrypted."""

    def pool_wait(self, way: str, seconds: float) -> None:
        """A request waited ``seconds`` for its connection (``dedicated`` or ``shared``)."""

    def gateway_connections(self, *, in_use: int = 0, opened: int = 0) -> None:
        """Gateway connections changed by these amounts (checked out; open)."""

    def gateway_pool_created(self, size: int) -> None:
        """A gateway pool of at most ``size`` connections now exists in this worker."""

    def listener_connected(self, connected: bool) -> None:
        """The change-event listener's connection is now up (True) or down (False)."""
