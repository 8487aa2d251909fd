"""Read-your-writes: WAL positions, and the ``X-Consistency-Token`` that carries one.

Every transaction that commits on a tenant connection reads the server's WAL insert
position in the same message as its ``COMMIT`` (``session.py``), so the position costs no
round trip: everything that transaction wrote lies at or before it. A write's response
hands it to the client as an opaque token; a read that sends it back is served only by a
server that has replayed at least that far (``replicas.py``), else by the primary.

The token is ``1.<position, 16 hex digits>.<tag of the cluster, 8 hex digits>``. The tag
ties it to the tenant's cluster: positions of two clusters cannot be compared, so a token
made on another cluster (the tenant moved since) sends the read to the primary. Tokens
are not signed: a forged one can only make its sender's own reads go to the primary, as
reads without replicas do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from app.tenancy.errors import InvalidConsistencyToken

__all__ = [
    "HEADER",
    "ConsistencyToken",
    "InvalidConsistencyToken",
    "format_token",
    "lsn_from_text",
    "parse_token",
    "record_end",
]

HEADER = "X-Consistency-Token"
_TOKEN = re.compile(r"^1\.([0-9a-f]{16})\.([0-9a-f]{8})$")
_MAX_LENGTH = 64

# PostgreSQL's WAL layout: a page of XLOG_BLCKSZ bytes starts with a short header, the
# first page of each segment with a long one. An insert position just past a header is
# where the next record will start; the last record ended before that header.
_PAGE = 8192
_SEGMENT = 16 * 1024 * 1024
_SHORT_HEADER = 24
_LONG_HEADER = 40


@dataclass(frozen=True)
class ConsistencyToken:
    """A WAL position on the cluster whose tag it carries."""

    position: int
    tag: str

    def for_cluster(self, cluster: str) -> int | None:
        """The position if the token was made on ``cluster``, else None (not comparable)."""
        return self.position if self.tag == cluster_tag(cluster) else None


def cluster_tag(cluster: str) -> str:
    """Eight hex digits naming a cluster in tokens (not secret, only distinct)."""
    return hashlib.sha256(cluster.encode()).hexdigest()[:8]


def format_token(position: int, cluster: str) -> str:
    """The header value for ``position`` on ``cluster``."""
    return f"1.{position:016x}.{cluster_tag(cluster)}"


def parse_token(values: list[str]) -> ConsistencyToken | None:
    """The token of a request's ``X-Consistency-Token`` headers; None without one.

    Raises InvalidConsistencyToken for a repeated header or a value not made here.
    """
    if not values:
        return None
    if len(values) > 1:
        raise InvalidConsistencyToken("send X-Consistency-Token at most once")
    value = values[0].strip()
    match = _TOKEN.match(value) if len(value) <= _MAX_LENGTH else None
    if match is None:
        raise InvalidConsistencyToken(
            "X-Consistency-Token is malformed: send back the value of a write's response as-is"
        )
    return ConsistencyToken(int(match.group(1), 16), match.group(2))


def lsn_from_text(text: str) -> int:
    """``'16/B374D848'`` (PostgreSQL's pg_lsn text) as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def record_end(insert_position: int) -> int:
    """The end of the last record before ``insert_position`` (an insert position).

    ``pg_last_wal_replay_lsn()`` on a standby reports the end of the last record it
    replayed, which lies before a page header; ``pg_current_wal_insert_lsn()`` lies past
    it. Without this a primary that went idle just after a page boundary would look
    forever one header ahead of every standby.
    """
    if insert_position % _SEGMENT == _LONG_HEADER:
        return insert_position - _LONG_HEADER
    if insert_position % _PAGE == _SHORT_HEADER:
        return insert_position - _SHORT_HEADER
    return insert_position
