"""Failures of the tenancy layer. ``app.errors`` turns each into a problem+json response."""

from __future__ import annotations


class TenancyError(Exception):
    """Base of every tenancy failure."""


class InvalidTenantHeader(TenancyError):
    """``X-Tenant-ID`` is missing, repeated or not a canonical UUID (400)."""


class InvalidConsistencyToken(TenancyError):
    """``X-Consistency-Token`` is repeated or not a value this service made (400)."""


class AuthenticationFailed(TenancyError):
    """No API key, a wrong one, or one of another tenant: one answer for all (401)."""


class TenantSuspended(TenancyError):
    """The tenant exists and authenticated, but is suspended (403)."""


class ReadOnlyToken(TenancyError):
    """An end user's token without the write scope asked to write (403)."""


class TenantUnavailable(TenancyError):
    """The tenant's database cannot be reached right now (503).

    ``retry_after`` is the number of seconds a client should wait.
    """

    def __init__(self, message: str, *, retry_after: int = 1, code: str = "database_unavailable"):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class RetryLater(TenancyError):
    """A refusal that passes: ``retry_after`` is the number of seconds a client should wait."""

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class CapacityExhausted(RetryLater):
    """Every connection this worker may open is busy, and none freed up in time (503)."""


class TooManyAuthFailures(RetryLater):
    """The client failed to authenticate too often lately (429), whoever it names."""


class TenantOverShare(RetryLater):
    """The tenant holds its share of the worker's threads while others are served (429)."""


class TenantNotFound(TenancyError, LookupError):
    """An admin operation named a tenant that does not exist (404)."""


class TenantNameTaken(TenancyError):
    """Another tenant has this name already (409)."""


class UnknownCluster(TenancyError):
    """A cluster name that ``APP_CLUSTERS`` does not define (``default`` always exists)."""
