"""Gunicorn settings and worker hooks; values come from the APP_* environment.

The master imports none of the service's own code, so a graceful reload (``kill -HUP``,
which re-runs this file) starts workers that import the code on disk: a changed module is
served by the new workers. That is why

- the settings are read here and ``config`` is then forgotten (``_forget``);
- the log format (app/logs.py), what the master records of a worker's exit
  (app/worker_exits.py) and the worker class (app/fair_dispatch.py, app/presence.py) are
  loaded from their files by path, not imported as ``app.*`` (which would import the whole
  ``app`` package, and its metrics, into the master); they import nothing of ``app``
  (tests/test_layout.py);
- the start-up checks (capacity, affinity) run in a short-lived forked child;
- the worker hooks import what they need inside the worker.

The third-party libraries every worker imports are imported once here (``_LIBRARIES``), so
a worker boots in about a tenth of a second, as when the master held the whole app; they
are not the service's code (a new version of one needs a restart, not a reload).

The multiprocess metrics directory this master makes is named after its pid and removed when
the master's interpreter exits, however it stops (SIGTERM, a refusal to start, a port in
use); one left by a master that could not exit (``kill -9``, a crash) is removed by the next
start.
"""

import atexit
import importlib.util
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

_ROOT = Path(__file__).resolve().parent
_OURS = ("app", "config", "wsgi")
_METRICS_PREFIX = "tenantpool-metrics-"
_MASTERS_DIR = re.compile(rf"^{_METRICS_PREFIX}(\d+)-")


def _forget(*packages: str) -> None:
    """Drop our modules from the master's ``sys.modules``: workers forked after a reload
    import them again from disk. (Only ours: they register nothing outside themselves.)"""
    for name in list(sys.modules):
        if name.split(".", 1)[0] in packages:
            del sys.modules[name]


def _load_settings() -> Any:
    """The settings, or exit with the one line naming the bad variable."""
    try:
        from config import ConfigError, load_settings  # forgotten right after

        try:
            return load_settings()
        except ConfigError as error:
            sys.exit(f"tenantpool: configuration error: {error}")
    finally:
        _forget(*_OURS)


def _load_by_path(relative: str) -> Any:
    """A module of the app from its file, under a name of the master's own: a fresh copy at
    every (re)load of this file, and no ``app`` package in the master."""
    path = _ROOT / relative
    name = "_tenantpool_master_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file has both
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The worker class's modules (see worker_class); the next function uses process_alive.
_fair = _load_by_path("app/fair_dispatch.py")
_node_share = _load_by_path("app/node_share.py")


def _remove_dead_masters_dirs() -> None:
    """Metrics directories of masters that are gone (killed, crashed) without cleaning up."""
    for path in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*"):
        made_by = _MASTERS_DIR.match(path.name)
        if made_by and path.is_dir() and not _node_share.process_alive(int(made_by[1])):
            shutil.rmtree(path, ignore_errors=True)


def _metrics_dir() -> Path:
    """The multiprocess metrics directory of this master.

    A reload finds its own directory in the environment and keeps it as it is: the old
    workers still write there until they finish.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    made_by = _MASTERS_DIR.match(Path(given).name) if given else None
    if given and made_by and int(made_by[1]) == os.getpid():
        return Path(given)
    if given and not made_by:  # the operator's choice: emptied of a previous run's samples
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path
    _remove_dead_masters_dirs()
    made = Path(tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-"))
    _remove_when_this_process_exits(made)
    return made


def _remove_when_this_process_exits(path: Path) -> None:
    """At the master's exit, not its workers' (they inherit the handler with the fork)."""
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


# Settings first: a bad one stops start-up before anything is created on disk.
_settings = _load_settings()

# Before anything imports prometheus_client (the workers do): it chooses multiprocess
# storage from this variable at import time.
_METRICS_DIR = _metrics_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_METRICS_DIR)

# Pinned in requirements.txt and imported by every worker; never OpenTelemetry, which the
# app loads only when tracing is on.
_LIBRARIES = (
    *("flask", "sqlalchemy", "sqlalchemy.orm", "psycopg2", "marshmallow", "apispec"),
    *("alembic", "cryptography", "orjson", "pythonjsonlogger", "prometheus_client"),
)
for _library in _LIBRARIES:
    importlib.import_module(_library)

bind = _settings.bind
workers = _settings.workers
threads = _settings.threads
# gthread, with each free thread given fairly between requesters (app/fair_dispatch.py): a
# request over its tenant's share waits on the poller, not in a thread.
worker_class = _fair.fair_worker(
    min(_settings.tenant_thread_share, _settings.threads),
    _load_by_path("app/presence.py").Presence,
    # Across the workers too, in shared memory made here, before the fork: a row per worker,
    # with room for a reload's new workers beside the old ones.
    (
        _node_share.NodeShare(_settings.tenant_node_share, rows=2 * _settings.workers + 2)
        if _settings.tenant_node_share < _settings.workers * _settings.threads
        else None
    ),
)
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
# gunicorn's own lines are JSON too
logconfig_dict = _load_by_path("app/logs.py").gunicorn_logconfig(_settings.log_level)
# Request head limits (gunicorn's defaults, stated because tests and docs rely on them):
# a longer request line gets 414, more or larger header fields get 431, all from gunicorn
# with an HTML body before the app sees the request. Bodies are limited by the app (413).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
preload_app = False
# One shared control socket path would collide between instances (tests run several).
control_socket_disable = True


_CHECKS_PASSED = "ok"


def _preflight() -> str | None:
    """The start-up checks, in a forked child so the master imports none of the app: why
    the service must not start, or None."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, say the outcome, exit without the master's cleanup
        os.close(read_end)
        os.write(write_end, _checked().encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode(errors="replace")
    # (Before gunicorn's SIGCHLD handler exists: nobody else reaps it.)
    os.waitpid(pid, 0)
    if outcome == _CHECKS_PASSED:
        return None
    return outcome or "the start-up checks ended without an answer"


def _checked() -> str:
    """In the preflight child: run the checks; their refusal, or ``_CHECKS_PASSED``."""
    scratch = tempfile.mkdtemp(prefix="tenantpool-preflight-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = scratch  # its metrics are nobody's
    try:
        # Imported in the child only, which exits right after.
        from app.affinity import AffinityError, check_affinity
        from app.capacity import CapacityError, check_capacity
        from config import load_settings

        settings = load_settings()
        check_capacity(settings)
        check_affinity(settings)
    except (CapacityError, AffinityError) as error:
        return str(error)
    except Exception as error:  # any failure must reach the master as a reason not to start
        return f"the start-up checks failed: {type(error).__name__}: {error}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _CHECKS_PASSED


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to start when the workers' connections cannot fit in the database servers, or
    when shared connections would go through a pooler that moves them between backends."""
    refusal = _preflight()
    if refusal:
        sys.exit(f"tenantpool: not starting: {refusal}")


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Start the worker's reaper before the app is loaded; registries attach to it later."""
    from app import metrics  # in the worker
    from app.tenancy.serving.reaper import process_reaper  # in the worker

    process_reaper().configure(interval=_settings.reaper_interval)
    process_reaper().start()
    metrics.worker_started()


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """The worker loaded the app and serves from now on: one line says so."""
    worker.log.info("worker ready")


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Stop the reaper and dispose every engine of this worker; it leaves gracefully."""
    from app import metrics  # in the worker
    from app.tenancy.serving.reaper import shutdown_process  # in the worker

    metrics.worker_exiting()
    shutdown_process()


# After PROMETHEUS_MULTIPROC_DIR is set: prometheus_client reads it when first imported.
_worker_exits = _load_by_path("app/worker_exits.py")
_exits = _worker_exits.exits_counter(registry=None)  # the master serves no /metrics


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """In the master: count how the worker went; drop its live gauges and files."""
    _worker_exits.record_exit(_exits, _METRICS_DIR, worker.pid, aborted=worker.aborted)
