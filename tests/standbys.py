"""Helpers of the failover tests: multi-host DSNs over local clusters."""

from __future__ import annotations

import sqlalchemy as sa


def multi_host(url: str, *ports: int) -> str:
    """``url`` listing 127.0.0.1 on each of ``ports`` in turn (libpq multi-host, SQLAlchemy's
    spelling), nothing else changed: no ``target_session_attrs`` of its own."""
    parsed = sa.make_url(url)
    listed = sa.URL.create(
        parsed.drivername,
        username=parsed.username,
        password=parsed.password,
        database=parsed.database,
        query={**parsed.query, "host": tuple(f"127.0.0.1:{port}" for port in ports)},
    )
    return listed.render_as_string(hide_password=False)
