"""JSON log lines on stderr: one object per line, easy to ship and to search.

Every line has ``ts``, ``level``, ``logger``, ``msg`` and ``pid``, the record's ``extra``
fields (the access log adds ``request_id``, ``tenant_id``, ``route``, ``status``,
``duration_ms``) and ``exc`` for a traceback. Gunicorn's own error log goes through the
same formatter (``gunicorn_logconfig``), so a process's stderr is JSON from its first line.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.core import BaseJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter


def json_formatter() -> BaseJsonFormatter:
    """The house formatter: standard fields under short names, extras as they are.

    python-json-logger's orjson flavour: the access line is written for every request,
    and the standard json module made it a few percent of a request's CPU.
    """
    return OrjsonFormatter(
        ["levelname", "name", "message", "process"],
        rename_fields={
            "levelname": "level",
            "name": "logger",
            "message": "msg",
            "process": "pid",
            "exc_info": "exc",
        },
        timestamp="ts",
    )


def configure(level: str) -> None:
    """Route the root logger to stderr as JSON, once per process (gunicorn may have done it)."""
    # Python warnings would otherwise be bare text lines in the middle of the JSON stream.
    logging.captureWarnings(True)
    root = logging.getLogger()
    if any(isinstance(h.formatter, BaseJsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    root.handlers = [handler]
    root.setLevel(level)


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """Gunicorn's ``logconfig_dict``: its error log and the app's share one JSON handler.

    ``gunicorn.error`` keeps no handler of its own and propagates to the root, so the
    master's lines ("Booting worker", worker timeouts, tracebacks) are JSON too and none
    is written twice once the app configures logging in the worker.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"handlers": [], "propagate": True}},
    }
