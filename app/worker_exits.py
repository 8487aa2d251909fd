"""A gunicorn worker's exit as the master records it: how it went, and its files forgotten.

Standard library and prometheus_client only, on purpose: gunicorn.conf.py loads this file
by path into the master, which imports nothing of the ``app`` package, so a graceful reload
(SIGHUP) starts workers on the code on disk (tests/test_layout.py keeps it a leaf). The
names of a worker's files in the shared metrics directory are defined here, and
app.metrics, app.top_tenants and the peers' sockets take them from here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, multiprocess

EXIT_KINDS = ("graceful", "timeout", "killed")


def exits_counter(registry: CollectorRegistry | None = REGISTRY) -> Counter:
    """The worker exits counter; the master's is in no registry (it serves no /metrics)."""
    return Counter(
        "tenantpool_worker_exits",
        "Gunicorn workers gone, by how: graceful (stopped or reloaded), timeout (killed by "
        "gunicorn after its worker timeout), killed (died without exiting: OOM, a crash).",
        ["how"],
        registry=registry,
    )


def exit_marker(directory: Path, pid: int) -> Path:
    """Left by a worker that leaves by itself (``worker_exit``): its exit is not a death."""
    return directory / f"exiting-{pid}"


SOCKET_PREFIX = "peer-"


def socket_path(directory: Path, pid: int) -> Path:
    """Where the worker ``pid`` answers its peers."""
    return directory / f"{SOCKET_PREFIX}{pid}.sock"


def top_file(directory: Path, pid: int) -> Path:
    """The worker ``pid``'s busiest tenants."""
    return directory / f"top-{pid}.json"


def record_exit(counter: Counter, directory: Path | None, pid: int, *, aborted: bool) -> None:
    """Count how the worker went (``aborted``: gunicorn killed it after its timeout) and
    forget its live gauges and files."""
    marker = None if directory is None else exit_marker(directory, pid)
    graceful = marker is not None and marker.exists()
    counter.labels("timeout" if aborted else "graceful" if graceful else "killed").inc()
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    if directory is not None and marker is not None:
        for path in (marker, socket_path(directory, pid), top_file(directory, pid)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
