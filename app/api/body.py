"""Reading request bodies and query strings strictly, before any schema or SQL sees them; pages."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flask import Response, jsonify, request
from marshmallow import Schema
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import BadRequest, UnsupportedMediaType, ValidationFailed

QUERY_CACHE_SIZE = 1024
"""Query strings whose loaded form each worker keeps (per schema instance)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_object() -> dict[str, Any]:
    """The body as a JSON object; 415 for another media type, 400 for anything malformed.

    Parsed here rather than by ``request.get_json`` so that NaN/Infinity, absurd nesting
    (RecursionError) and over-long integers are a 400, never a 500. Over-size bodies were
    refused with 413 before this (``MAX_CONTENT_LENGTH``).
    """
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    raw = _body()
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _body() -> bytes:
    """The raw body; 413 when it is over ``MAX_CONTENT_LENGTH``, streamed or not."""
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    # werkzeug cuts a streamed (chunked) body at the limit without an error; if the
    # server's own stream, which ends where the body does, holds more, it was too large.
    cut = request.content_length is None and limit is not None and len(raw) >= limit
    if cut and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def query_args(schema: Schema) -> dict[str, Any]:
    """The query string loaded through ``schema``; a parameter given twice is a 422.

    The same query strings come back request after request (page 1 of a list, sorted as
    the client's screen sorts it), and loading one through marshmallow was a twentieth of
    a list request's CPU: a bounded cache keeps what a query string loaded to.
    """
    return dict(_load_query(schema, request.query_string))


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def _load_query(schema: Schema, query_string: bytes) -> Mapping[str, Any]:
    """What ``query_string`` loads to; a failed load raises and is not cached."""
    repeated = sorted(key for key, values in request.args.lists() if len(values) > 1)
    if repeated:
        raise ValidationFailed({key: ["given more than once"] for key in repeated})
    loaded: dict[str, Any] = schema.load(request.args.to_dict(flat=True))
    return MappingProxyType(loaded)


def page_response(
    records: list[Any], *, page: int, page_size: int, total: int, total_capped: bool = False
) -> Response:
    """A list endpoint's answer, in the Rust template's shape (``PageSchema``).

    ``total_capped``: ``total`` is a lower bound (app/api/listing.py); only then does the
    answer carry ``"total_capped": true``, so small lists keep the template's exact shape.
    """
    extra = {"total_capped": True} if total_capped else {}
    return jsonify(
        records=records,
        page=page,
        page_size=page_size,
        total=total,
        total_pages=math.ceil(total / page_size),
        **extra,
    )
