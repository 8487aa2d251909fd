"""app.logs: one JSON object per line, the same fields for the app and for gunicorn."""

from __future__ import annotations

import json
import logging
import sys

from app.logs import json_formatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "tenantpool.access", "levelname": "INFO", "msg": "request %s", "args": ("x",)}
    )
    record.__dict__.update(extra)
    return record


def test_json_formatter_standard_fields_under_short_names() -> None:
    line = json.loads(json_formatter().format(_record()))
    assert line["level"] == "INFO"
    assert line["logger"] == "tenantpool.access"
    assert line["msg"] == "request x"
    assert isinstance(line["pid"], int)
    assert line["ts"].endswith("+00:00")


def test_json_formatter_keeps_extra_fields() -> None:
    extra = {"request_id": "r1", "tenant_id": None, "route": "/v1/users", "status": 200}
    line = json.loads(json_formatter().format(_record(duration_ms=1.5, **extra)))
    assert {key: line[key] for key in extra} == extra
    assert line["duration_ms"] == 1.5


def test_json_formatter_traceback_in_exc() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    line = json.loads(json_formatter().format(record))
    assert "ValueError: bad" in line["exc"]
    assert "exc_info" not in line


def test_json_formatter_one_line_per_record() -> None:
    assert "\n" not in json_formatter().format(_record(note="two\nlines"))
