"""A TCP fault proxy for tests: sits between the service and PostgreSQL on 127.0.0.1.

One selector thread forwards bytes both ways; the test thread switches faults at runtime:

- ``latency(seconds)``: every chunk is held that long before it is forwarded (order kept).
- ``blackhole()``: nothing moves any more. New connections are accepted (the kernel
  completes the handshake, as a hung peer's would) but not connected upstream; established
  ones are neither read nor written, so their peers wait for answers that never come.
  ``heal()`` lets everything flow again, held connections included.
- ``reset_on_reply(pattern)``: once. The next client chunk containing ``pattern`` is
  forwarded, and the server's reply to it is not: both sockets are reset (RST) instead, so
  the server ran the statement and the client never hears of it.
- ``reset_all()``: reset every open connection now.

Only loopback addresses are used; the proxy stops with ``close()`` (or its ``with`` block).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_CHUNK = 65536
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


@dataclass(eq=False)
class _Pipe:
    """One direction of a connection: what is read from ``src`` goes to ``dst``."""

    src: socket.socket
    dst: socket.socket | None
    # Chunks read but not yet due (latency); (due, sequence, data) keeps order.
    delayed: list[tuple[float, int, bytes]] = field(default_factory=list)
    outgoing: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    server: socket.socket | None = None
    up: _Pipe | None = None  # client -> server
    down: _Pipe | None = None  # server -> client
    doomed: bool = False  # reset instead of forwarding the server's next reply


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; faults switch at runtime. Thread safe."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._latency = 0.0
        self._blackholed = False
        self._reset_patterns: list[bytes] = []
        self._reset_everything = False
        self._closed = False
        self._connections: list[_Connection] = []
        self._sequence = itertools.count()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._interest: dict[socket.socket, int] = {}
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults, called from the test thread ------------------------------------------

    def retarget(self, upstream_port: int) -> None:
        """Send new connections to another port (a server restarted elsewhere)."""
        with self._lock:
            self._upstream = (self._upstream[0], upstream_port)

    def latency(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it (0 turns it off)."""
        self._change(latency=seconds)

    def blackhole(self) -> None:
        """Stop moving bytes; accept new connections but never answer them."""
        self._change(blackholed=True)

    def heal(self) -> None:
        """Back to plain forwarding: no latency, no black hole, no pending reset."""
        with self._lock:
            self._reset_patterns.clear()
        self._change(latency=0.0, blackholed=False)

    def reset_on_reply(self, pattern: bytes) -> None:
        """Reset the connection that next sends ``pattern`` when the server answers it."""
        with self._lock:
            self._reset_patterns.append(pattern)

    def reset_all(self) -> None:
        """Reset every connection open now."""
        with self._lock:
            self._reset_everything = True
        self._wake()

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Stop the thread and reset every connection."""
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join(10)

    def _change(self, **values: object) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, f"_{name}", value)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the selector thread -----------------------------------------------------------

    def _run(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    blackholed = self._blackholed
                    reset_everything, self._reset_everything = self._reset_everything, False
                if reset_everything:
                    for connection in list(self._connections):
                        self._reset(connection)
                if not blackholed:
                    self._connect_held()
                self._update_interest(blackholed)
                timeout = None if blackholed else self._next_due()
                for key, events in self._selector.select(timeout):
                    self._dispatch(key.fileobj, events, blackholed)  # type: ignore[arg-type]
                if not blackholed:
                    self._release_due()
        finally:
            for connection in list(self._connections):
                self._reset(connection)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _dispatch(self, sock: socket.socket, events: int, blackholed: bool) -> None:
        if sock is self._wake_r:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            return
        if sock is self._listener:
            self._accept()
            return
        connection, pipe = self._find(sock)
        if connection is None or blackholed:
            return
        if events & selectors.EVENT_WRITE:
            self._flush(connection, sock)
        if events & selectors.EVENT_READ and pipe is not None and connection in self._connections:
            self._read(connection, pipe)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            client.setblocking(False)
            with self._lock:
                self._connections.append(_Connection(client))

    def _connect_held(self) -> None:
        """Connect upstream every accepted client not connected yet."""
        with self._lock:
            upstream = self._upstream
        for connection in list(self._connections):
            if connection.server is not None:
                continue
            try:
                server = socket.create_connection(upstream, timeout=5)
            except OSError:
                self._reset(connection)  # as a refused connection looks to the client
                continue
            server.setblocking(False)
            connection.server = server
            connection.up = _Pipe(connection.client, server)
            connection.down = _Pipe(server, connection.client)

    def _find(self, sock: socket.socket) -> tuple[_Connection | None, _Pipe | None]:
        for connection in self._connections:
            if sock is connection.client:
                return connection, connection.up
            if sock is connection.server:
                return connection, connection.down
        return None, None

    def _read(self, connection: _Connection, pipe: _Pipe) -> None:
        try:
            data = pipe.src.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        with self._lock:
            latency = self._latency
            if pipe is connection.up:
                for pattern in self._reset_patterns:
                    if pattern in data:
                        self._reset_patterns.remove(pattern)
                        connection.doomed = True
                        break
        if pipe is connection.down and connection.doomed:
            self._reset(connection)
            return
        heapq.heappush(pipe.delayed, (time.monotonic() + latency, next(self._sequence), data))

    def _release_due(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections):
            for pipe in (connection.up, connection.down):
                if pipe is None:
                    continue
                while pipe.delayed and pipe.delayed[0][0] <= now:
                    pipe.outgoing += heapq.heappop(pipe.delayed)[2]
                if pipe.outgoing:
                    self._flush(connection, pipe.dst)

    def _flush(self, connection: _Connection, sock: socket.socket | None) -> None:
        pipe = connection.up if sock is connection.server else connection.down
        if pipe is None or sock is None or not pipe.outgoing:
            return
        try:
            sent = sock.send(pipe.outgoing)
        except BlockingIOError:
            return
        except OSError:
            self._drop(connection)
            return
        del pipe.outgoing[:sent]

    def _next_due(self) -> float | None:
        dues = [
            pipe.delayed[0][0]
            for connection in self._connections
            for pipe in (connection.up, connection.down)
            if pipe is not None and pipe.delayed
        ]
        return None if not dues else max(0.0, min(dues) - time.monotonic())

    def _update_interest(self, blackholed: bool) -> None:
        wanted: dict[socket.socket, int] = {}
        for connection in self._connections:
            up, down = connection.up, connection.down
            if up is None or down is None or blackholed:
                # Watched for nothing: a held or black-holed connection is left alone.
                continue
            for pipe, other in ((up, down), (down, up)):
                events = selectors.EVENT_READ
                if other.outgoing:
                    events |= selectors.EVENT_WRITE
                wanted[pipe.src] = events
        for sock in list(self._interest):
            if sock not in wanted:
                self._selector.unregister(sock)
                del self._interest[sock]
        for sock, events in wanted.items():
            if sock not in self._interest:
                self._selector.register(sock, events)
            elif self._interest[sock] != events:
                self._selector.modify(sock, events)
            self._interest[sock] = events

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        for sock in (connection.client, connection.server):
            if sock is not None and sock in self._interest:
                self._selector.unregister(sock)
                del self._interest[sock]

    def _drop(self, connection: _Connection) -> None:
        """One side closed: close the other (FIN), dropping what was not yet sent."""
        self._forget(connection)
        for sock in (connection.client, connection.server):
            if sock is not None:
                sock.close()

    def _reset(self, connection: _Connection) -> None:
        """Close both sides with RST."""
        self._forget(connection)
        for sock in (connection.client, connection.server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                sock.close()
