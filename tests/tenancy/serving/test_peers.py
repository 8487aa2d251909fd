"""Workers asking each other about a tenant: real sockets, a real reaper thread answering."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.tenancy.serving.peers import PeerServer, ask_peers, socket_path
from app.tenancy.serving.reaper import Reaper
from tests.support import eventually


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A short path: AF_UNIX socket paths are limited to about 100 bytes.
    return Path(tmp_path_factory.mktemp("peers", numbered=True))


@pytest.fixture
def answering(directory: Path) -> Iterator[PeerServer]:
    """This process's peer socket, answered by a reaper thread as in a worker."""

    def answer(tenant_id: uuid.UUID) -> dict[str, Any]:
        return {"pid": os.getpid(), "tenant": str(tenant_id), "in_flight": 2}

    server = PeerServer(directory, answer)
    reaper = Reaper(interval=60)
    reaper.listen(server)
    reaper.start()
    deadline = time.monotonic() + 10
    while not socket_path(directory, os.getpid()).exists():  # bound by the reaper's first wait
        assert time.monotonic() < deadline, "the reaper did not bind the peer socket"
        time.sleep(0.01)
    yield server
    reaper.stop()
    server.close()


def test_peers_answer_with_the_view_of_the_asked_tenant(
    directory: Path, answering: PeerServer
) -> None:
    tenant = uuid.uuid4()

    views, unanswered = ask_peers(directory, tenant, timeout=5, skip_self=False)

    assert views == [{"pid": os.getpid(), "tenant": str(tenant), "in_flight": 2}]
    assert unanswered == []
    assert oct(socket_path(directory, os.getpid()).stat().st_mode & 0o777) == "0o600"


def test_peers_skip_this_process_by_default(directory: Path, answering: PeerServer) -> None:
    assert ask_peers(directory, uuid.uuid4(), timeout=1) == ([], [])


def test_peers_socket_of_a_gone_worker_is_removed(directory: Path) -> None:
    stale = directory / "peer-999999.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(stale))  # closed at once: nobody receives there

    assert ask_peers(directory, uuid.uuid4(), timeout=1) == ([], [])
    assert not stale.exists()


def test_peers_silent_worker_is_reported_not_waited_for(directory: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as silent:
        silent.bind(str(directory / "peer-999998.sock"))  # receives, never answers

        views, unanswered = ask_peers(directory, uuid.uuid4(), timeout=0.3)

    assert (views, unanswered) == ([], [999998])


def test_peers_server_ignores_what_is_not_a_question(
    directory: Path, answering: PeerServer
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(directory / "junk.sock"))
        for junk in (b"not json", b'{"tenant": "x", "nonce": "1"}', b"[]"):
            sock.sendto(junk, str(socket_path(directory, os.getpid())))

        views, _ = ask_peers(directory, uuid.uuid4(), timeout=5, skip_self=False)

    assert len(views) == 1  # still answering
    # The reply is sent before the count goes up, in the reaper thread: wait for it.
    assert eventually(lambda: answering.answered == 1, timeout=5)
