"""Gunicorn settings and worker hooks; values come from the APP_* environment."""

import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

# config imports no prometheus_client (see the metrics directory below).
from config import ConfigError, load_settings


def _fresh_metrics_dir() -> tuple[Path, bool]:
    """The multiprocess metrics directory of this run, emptied; and whether we made it."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        return Path(tempfile.mkdtemp(prefix="tenantpool-metrics-")), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # samples of a previous run's workers
        stale.unlink()
    return path, False


# Settings first: a bad one stops start-up before anything is created on disk.
try:
    _settings = load_settings()
except ConfigError as error:
    sys.exit(f"tenantpool: configuration error: {error}")

# Before anything imports prometheus_client (the app does): it chooses multiprocess
# storage from this variable at import time, and the workers inherit it.
_METRICS_DIR, _METRICS_DIR_OURS = _fresh_metrics_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_METRICS_DIR)

from gunicorn.glogging import Logger  # noqa: E402

from app import metrics as app_metrics  # noqa: E402 - must follow the variable above
from app.affinity import AffinityError, check_affinity  # noqa: E402
from app.capacity import CapacityError, check_capacity  # noqa: E402
from app.logs import gunicorn_logconfig  # noqa: E402
from app.tenancy.serving.reaper import process_reaper, shutdown_process  # noqa: E402

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# Above the longest a request waits on the database (a pool wait, then up to two round
# trips and reconnects, each bounded by app.dbwait), so a slow or silent database gives a
# 503, not a killed worker.
_database_wait = _settings.pool_timeout + 2 * (
    _settings.connect_timeout + _settings.database_io_timeout
)
timeout = max(30, math.ceil(_database_wait) + 10)
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs one JSON line per request


class _AppLogsRequests(Logger):  # type: ignore[misc]
    """Gunicorn's logger without its access line, which the app writes itself (request_log).

    With ``logconfig_dict`` set gunicorn counts access logging as on and builds each
    request's log atoms, a few percent of a request's CPU, for a line nobody reads.
    """

    access_log_enabled = False


logger_class = _AppLogsRequests
loglevel = _settings.log_level.lower()
logconfig_dict = gunicorn_logconfig(_settings.log_level)  # gunicorn's own lines are JSON too
# Request head limits (gunicorn's defaults, stated because tests and docs rely on them):
# a longer request line gets 414, more or larger header fields get 431, all from gunicorn
# with an HTML body before the app sees the request. Bodies are limited by the app (413).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
preload_app = False
# One shared control socket path would collide between instances (tests run several).
control_socket_disable = True


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to start when the workers' connections cannot fit in the database servers, or
    when shared connections would go through a pooler that moves them between backends."""
    try:
        check_capacity(_settings)
        check_affinity(_settings)
    except (CapacityError, AffinityError) as error:
        sys.exit(f"tenantpool: not starting: {error}")


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Start the worker's reaper before the app is loaded; registries attach to it later."""
    process_reaper().configure(interval=_settings.reaper_interval)
    process_reaper().start()
    app_metrics.worker_started()


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Stop the reaper and dispose every engine of this worker; it leaves gracefully."""
    app_metrics.worker_exiting()
    shutdown_process()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """In the master: count how the worker went; drop its live gauges and files."""
    app_metrics.worker_exited(worker.pid, aborted=worker.aborted)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics directory this run made."""
    if _METRICS_DIR_OURS:
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)
