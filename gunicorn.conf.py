"""Gunicorn settings and worker hooks; values come from the APP_* environment."""

import sys

from app.logs import gunicorn_logconfig
from app.tenancy.reaper import process_reaper, shutdown_process
from config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as error:
    sys.exit(f"tenantpool: configuration error: {error}")

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# Above the database connect and statement timeouts, so a slow database gives a 503,
# not a killed worker.
timeout = max(30, _settings.connect_timeout + _settings.tenant_statement_timeout_ms // 1000 + 10)
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs one JSON line per request
loglevel = _settings.log_level.lower()
logconfig_dict = gunicorn_logconfig(_settings.log_level)  # gunicorn's own lines are JSON too
preload_app = False
# One shared control socket path would collide between instances (tests run several).
control_socket_disable = True


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Start the worker's reaper before the app is loaded; registries attach to it later."""
    process_reaper().configure(interval=_settings.reaper_interval)
    process_reaper().start()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Stop the reaper and dispose every engine of this worker."""
    shutdown_process()
