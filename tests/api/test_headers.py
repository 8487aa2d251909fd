"""header_values finds what getlist finds, a repeated header included."""

from __future__ import annotations

import pytest
from flask import Flask, request

from app.headers import header_values

_SENT = [
    ("X-Tenant-ID", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    ("Authorization", "Bearer one"),
    ("Authorization", "Bearer two"),
    ("Idempotency-Key", ""),
]


@pytest.mark.parametrize(
    "name", ["X-Tenant-ID", "x-tenant-id", "Authorization", "Idempotency-Key", "X-Absent"]
)
def test_header_values_is_getlist_in_one_lookup(name: str) -> None:
    with Flask(__name__).test_request_context(headers=_SENT):
        assert header_values(name) == request.headers.getlist(name)


def test_a_repeated_header_is_one_value_as_the_server_joined_it() -> None:
    with Flask(__name__).test_request_context(headers=_SENT):
        assert header_values("Authorization") == ["Bearer one, Bearer two"]
        assert header_values("X-Absent") == []
