"""The workers of one service asking each other about a tenant, over datagram sockets.

Each worker binds ``peer-<pid>.sock`` in the directory its gunicorn gives all its workers
(the Prometheus multiprocess directory) and answers there from its reaper thread, which
waits on the socket as on the change listener's (``PeerServer`` is a reaper listener).
``ask_peers`` sends one question to every other worker's socket and collects the answers
until all came or the timeout passed.

Why sockets and not a file per worker or the metrics files: the answer is computed when
asked, from the worker's own memory, so it is exact at that moment (what the test holds
against ``pg_stat_activity``) and costs nothing until someone asks; a file per worker
would be written all the time to be read now and then, and be a tick old when it is.

The sockets are made 0600 in a directory gunicorn made for this run: only the service's
own user can ask. A question names a tenant and nothing else; the answer is what the
admin API shows of it (no secret). A worker that does not answer in time is reported,
not waited for; a socket whose worker is gone is removed by the first to notice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.tenancy.serving.forks import reset_in_child
from app.worker_exits import SOCKET_PREFIX, socket_path

__all__ = ["PeerServer", "ask_peers", "socket_path"]

logger = logging.getLogger(__name__)

_MAX_DATAGRAM = 65_536
_PREFIX = SOCKET_PREFIX
_PATH_MAX = 100  # below AF_UNIX's 108 bytes, with room for the request socket's name

Answer = Callable[[uuid.UUID], dict[str, Any]]
"""This worker's view of one tenant, as JSON-ready values."""


class PeerServer:
    """This worker's answering socket; the reaper thread pumps it. Thread safe.

    Bound on first use (the reaper's first wait), so building an app binds nothing;
    never raises from ``pump`` (a bad question is dropped, a failed answer logged).
    """

    def __init__(self, directory: Path, answer: Answer) -> None:
        self._directory = directory
        self._answer = answer
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._pid: int | None = None
        self._failed = False
        self.answered = 0
        reset_in_child(self)

    def fileno(self) -> int | None:
        with self._lock:
            sock = self._bound_locked()
            return None if sock is None else sock.fileno()

    def retry_in(self) -> float | None:
        return None

    def pump(self) -> int:
        """Answer every question waiting on the socket; the number answered."""
        with self._lock:
            sock = self._bound_locked()
        if sock is None:
            return 0
        count = 0
        while True:
            try:
                data, sender = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                logger.warning("peer socket failed; answering no more questions", exc_info=True)
                return count
            if self._reply(sock, data, sender):
                count += 1
                self.answered += 1

    def close(self) -> None:
        with self._lock:
            sock, self._socket = self._socket, None
            pid = self._pid
        if sock is not None:
            sock.close()
            if pid == os.getpid():
                socket_path(self._directory, pid).unlink(missing_ok=True)

    def _bound_locked(self) -> socket.socket | None:
        if self._socket is not None and self._pid == os.getpid():
            return self._socket
        if self._failed:
            return None
        pid = os.getpid()
        path = socket_path(self._directory, pid)
        try:
            if len(str(path)) > _PATH_MAX:
                raise OSError(f"socket path {path} is too long for AF_UNIX")
            path.unlink(missing_ok=True)  # a previous worker of the same pid
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            path.chmod(0o600)
            sock.setblocking(False)
        except OSError:
            self._failed = True
            logger.warning("workers cannot ask this one about tenants", exc_info=True)
            return None
        self._socket, self._pid = sock, pid
        return sock

    def _reply(self, sock: socket.socket, data: bytes, sender: Any) -> bool:
        try:
            question = json.loads(data)
            tenant_id = uuid.UUID(str(question["tenant"]))
            nonce = str(question["nonce"])[:64]
        except (ValueError, KeyError, TypeError):
            return False  # not one of ours
        if not isinstance(sender, str) or not sender:
            return False  # an unbound sender cannot be answered
        try:
            reply = json.dumps({"nonce": nonce, "view": self._answer(tenant_id)})
            sock.sendto(reply.encode(), sender)
        except Exception:
            logger.warning("answering a peer about tenant %s failed", tenant_id, exc_info=True)
            return False
        return True

    def _reset_after_fork(self) -> None:
        """In a forked child: the socket is the parent's; bind a new one when asked."""
        self._lock = threading.Lock()
        self._socket = None
        self._pid = None
        self._failed = False


def ask_peers(
    directory: Path, tenant_id: uuid.UUID, *, timeout: float = 2.0, skip_self: bool = True
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every other worker's view of the tenant, and the pids that did not answer in time.

    ``skip_self``: this process answers for itself without a socket (False: ask it too).
    """
    me = os.getpid()
    peers = {}
    for path in directory.glob(f"{_PREFIX}*.sock"):
        pid = path.name.removeprefix(_PREFIX).removesuffix(".sock")
        if pid.isdigit() and not (skip_self and int(pid) == me):
            peers[int(pid)] = path
    if not peers:
        return [], []
    nonce = secrets.token_hex(8)
    question = json.dumps({"tenant": str(tenant_id), "nonce": nonce}).encode()
    own = directory / f"ask-{me}-{nonce}.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
        sock.bind(str(own))
        try:
            own.chmod(0o600)
            waiting = _send_all(sock, peers, question)
            return _collect(sock, nonce, waiting, time.monotonic() + timeout)
        finally:
            own.unlink(missing_ok=True)


def _send_all(sock: socket.socket, peers: dict[int, Path], question: bytes) -> set[int]:
    waiting = set()
    for pid, path in peers.items():
        try:
            sock.sendto(question, str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # its worker is gone
            continue
        except OSError:  # its queue is full: it counts as not answering
            logger.warning("cannot ask worker %d about a tenant", pid, exc_info=True)
        waiting.add(pid)
    return waiting


def _collect(
    sock: socket.socket, nonce: str, waiting: set[int], deadline: float
) -> tuple[list[dict[str, Any]], list[int]]:
    views: list[dict[str, Any]] = []
    while waiting and (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(_MAX_DATAGRAM)
        except TimeoutError:
            break
        try:
            reply = json.loads(data)
        except ValueError:
            continue
        view = reply.get("view") if reply.get("nonce") == nonce else None
        if isinstance(view, dict) and view.get("pid") in waiting:
            waiting.discard(view["pid"])
            views.append(view)
    return views, sorted(waiting)
