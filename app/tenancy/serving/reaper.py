"""The worker's background thread: disposes idle tenant engines, hears tenant events.

Gunicorn calls ``post_fork`` before the app is loaded (unless ``preload_app``), so the
reaper cannot belong to the app: it is one object per process (``process_reaper()``),
started from ``post_fork`` or ``create_app``, and each registry and event listener is
attached to it when built. ``shutdown_process()`` is what gunicorn's ``worker_exit`` calls.

Between ticks the thread waits in ``select()`` on its listeners' sockets (LISTEN for
tenant change events) and on a wake-up socket of its own, so an event is handled the
moment it arrives and ``stop()`` takes effect at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from app.tenancy.serving.forks import reset_in_child
from app.tenancy.serving.registry import Clock, EngineRegistry

__all__ = [
    "DEFAULT_INTERVAL",
    "THREAD_NAME",
    "Listener",
    "Reaper",
    "Task",
    "configure",
    "process_reaper",
    "shutdown_process",
]

logger = logging.getLogger(__name__)

THREAD_NAME = "tenantpool-reaper"
DEFAULT_INTERVAL = 5.0
"""Seconds between ticks until ``configure`` says otherwise (``APP_REAPER_INTERVAL``)."""

Task = Callable[[], object]
"""Run on every tick after reaping; must not block longer than a tick."""


class Listener(Protocol):
    """A socket the reaper waits on between ticks (``TenantEventListener``)."""

    def fileno(self) -> int | None:
        """The socket to wait on; None while disconnected."""

    def retry_in(self) -> float | None:
        """Seconds until ``pump()`` is due even if nothing arrives (a reconnection), or None."""

    def pump(self) -> int:
        """Connect if due and handle what arrived; never raises."""


class Reaper:
    """Calls ``reap_idle`` on every watched registry, then every task, each tick; pumps
    its listeners whenever their sockets turn readable.

    Thread safe. ``self._lock`` guards the watched registries, the listeners, the tasks
    and the thread state; it is never held while reaping, pumping or running a task.
    Registries and listeners are held through weak references, so an app that is thrown
    away (tests build many) does not keep its engines alive. An exception from one
    registry, listener or task is logged and the others still run: nothing kills the
    thread but ``stop()``.
    """

    def __init__(
        self, *, interval: float, clock: Clock = time.monotonic, tasks: Iterable[Task] = ()
    ) -> None:
        self._interval = _check_interval(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._registries: weakref.WeakSet[EngineRegistry[Any]] = weakref.WeakSet()
        self._tasks: list[Task] = list(tasks)
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self._stop = threading.Event()
        # The running thread's wake-up socket pair: written by stop() and listen().
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.ticks = 0
        self.failures = 0
        self.last_tick: float | None = None
        reset_in_child(self)

    @property
    def interval(self) -> float:
        """Seconds between ticks; a change applies from the next wait."""
        return self._interval

    def configure(self, *, interval: float) -> None:
        """Set the interval; usually before ``start()``."""
        self._interval = _check_interval(interval)

    def watch(self, registry: EngineRegistry[Any]) -> None:
        """Reap ``registry`` from now on (idempotent)."""
        with self._lock:
            self._registries.add(registry)

    def add_task(self, task: Task) -> None:
        """Run ``task`` on every tick, after reaping."""
        with self._lock:
            self._tasks.append(task)

    def listen(self, listener: Listener) -> None:
        """Wait on ``listener`` between ticks from now on (idempotent; held weakly)."""
        with self._lock:
            self._listeners.add(listener)
            wake = self._wake
        _wake_up(wake)

    def listeners(self) -> list[Listener]:
        """The listeners still alive and waited on."""
        with self._lock:
            return list(self._listeners)

    def watched(self) -> list[EngineRegistry[Any]]:
        """The registries still alive and watched."""
        with self._lock:
            return list(self._registries)

    def run_once(self, now: float | None = None) -> None:
        """One tick: reap every watched registry, then run every task. Never raises.

        ``now`` goes to each registry's ``reap_idle``; None lets each use its own clock.
        """
        started = self._clock()
        with self._lock:
            registries = list(self._registries)
            tasks = list(self._tasks)
        for registry in registries:
            try:
                registry.reap_idle(now)
            except Exception:
                self.failures += 1
                logger.exception("reaping idle tenant engines failed; next try in one tick")
        for task in tasks:
            try:
                task()
            except Exception:
                self.failures += 1
                logger.exception("reaper task %r failed; next try in one tick", task)
        self.ticks += 1
        self.last_tick = started
        elapsed = self._clock() - started
        if elapsed > self._interval:
            logger.warning("reaper tick took %.3fs, longer than its interval", elapsed)

    def start(self) -> None:
        """Start the daemon thread unless it already runs in this process (idempotent).

        After a fork the parent's thread does not exist in the child: the first
        ``start()`` there starts the child's own.
        """
        with self._lock:
            if self._running_locked():
                return
            stop = threading.Event()
            wake = socket.socketpair()
            for end in wake:
                end.setblocking(False)
            thread = threading.Thread(
                target=self._loop, args=(stop, wake[0]), name=THREAD_NAME, daemon=True
            )
            self._stop, self._thread, self._pid, self._wake = stop, thread, os.getpid(), wake
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        with self._lock:
            thread, stop, pid, wake = self._thread, self._stop, self._pid, self._wake
            self._thread = None
            self._wake = None
        stop.set()
        _wake_up(wake)
        if thread is None or pid != os.getpid() or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the reaper thread did not stop within %.1fs", timeout)
        elif wake is not None:
            # Closed here, once the thread is gone: it never closes them itself, so a
            # late _wake_up() cannot write to a descriptor number reused meanwhile.
            for end in wake:
                end.close()

    @property
    def running(self) -> bool:
        """Whether this process's reaper thread is alive and not stopping."""
        with self._lock:
            return self._running_locked()

    def _running_locked(self) -> bool:
        return (
            self._thread is not None
            and self._pid == os.getpid()
            and self._thread.is_alive()
            and not self._stop.is_set()
        )

    def _loop(self, stop: threading.Event, wake: socket.socket) -> None:
        next_tick = time.monotonic() + self._interval
        while not stop.is_set():
            try:
                remaining = next_tick - time.monotonic()
                if remaining > 0:
                    self._wait(remaining, wake)
                    continue
                self.run_once()
            except Exception:  # run_once and _wait catch already; this guards the thread
                logger.exception("reaper tick failed")
            next_tick = time.monotonic() + self._interval

    def _wait(self, timeout: float, wake: socket.socket) -> None:
        """Pump every listener, then wait until one is readable, woken, or ``timeout``."""
        waits: list[Any] = [wake]
        for listener in self.listeners():
            try:
                listener.pump()
                fd = listener.fileno()
                retry = listener.retry_in()  # a reconnection, or a check while connected
            except Exception:
                self.failures += 1
                logger.exception("reaper listener %r failed", listener)
                continue
            if fd is not None:
                waits.append(fd)
            if retry is not None:
                timeout = min(timeout, retry)
        try:
            readable, _, _ = select.select(waits, [], [], max(0.0, timeout))
        except (OSError, ValueError):
            # A listener's socket was closed under us (Tenancy.close from another thread);
            # the next pass collects the sockets again.
            return
        if wake in readable:
            with contextlib.suppress(OSError):
                wake.recv(4096)

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and may have held the lock."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._pid = None
        self._wake = None  # the parent's pair; dropping it closes only the child's copies


def _wake_up(wake: tuple[socket.socket, socket.socket] | None) -> None:
    if wake is not None:
        # Full buffer: a wake-up is pending already. Closed: the thread is gone.
        with contextlib.suppress(OSError):
            wake[1].send(b"x")


def _check_interval(interval: float) -> float:
    if not interval > 0:
        raise ValueError(f"reaper interval must be positive seconds, got {interval}")
    return float(interval)


_process_reaper: Reaper | None = None
_process_lock = threading.Lock()


def process_reaper() -> Reaper:
    """This process's reaper, created on first use with ``DEFAULT_INTERVAL``; not started."""
    global _process_reaper
    with _process_lock:
        if _process_reaper is None:
            _process_reaper = Reaper(interval=DEFAULT_INTERVAL)
        return _process_reaper


def configure(interval: float) -> Reaper:
    """Set the interval of this process's reaper; call before ``start()``."""
    reaper = process_reaper()
    reaper.configure(interval=interval)
    return reaper


def shutdown_process(close: bool = True) -> None:
    """Stop this process's reaper and dispose every watched registry's engines.

    Gunicorn's ``worker_exit`` calls it. ``close=False`` only forgets the engines
    (a forked child dropping what it inherited).
    """
    with _process_lock:
        reaper = _process_reaper
    if reaper is None:
        return
    reaper.stop()
    for registry in reaper.watched():
        try:
            registry.dispose_all(close=close)
        except Exception:
            logger.exception("disposing tenant engines at shutdown failed")


def _after_fork_in_child() -> None:
    global _process_lock
    _process_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
