"""The request's values of one header, found with one lookup."""

from __future__ import annotations

from flask import request


def header_values(name: str) -> list[str]:
    """What ``request.headers.getlist(name)`` gives, without walking the whole environ.

    A WSGI server hands each header over once (gunicorn and Werkzeug join a repeated one
    with commas), so there is at most one value; ``getlist`` finds it by title-casing every
    ``HTTP_*`` key of the environ, and the tenant hooks ask for three headers per request.
    The parsers take a list all the same, and refuse more than one value.
    """
    value = request.headers.get(name)
    return [] if value is None else [value]
