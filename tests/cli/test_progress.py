"""app.cli.progress: a bar on a terminal, periodic plain lines anywhere else."""

from __future__ import annotations

import io
import os
import pty

import pytest

from app.cli.progress import progress
from tests.support import FakeClock


def test_progress_off_a_terminal_writes_a_line_every_n_items() -> None:
    out, clock = io.StringIO(), FakeClock(now=0.0)
    with progress(10, "seeding", stream=out, every=4, clock=clock) as bar:
        for _ in range(10):
            clock.now += 0.1
            bar.update()
    assert out.getvalue().splitlines() == [
        "seeding: 4/10 (40%)",
        "seeding: 8/10 (80%)",
        "seeding: 10/10 (100%) done in 1.0 s",
    ]


def test_progress_off_a_terminal_writes_a_line_after_the_interval() -> None:
    out, clock = io.StringIO(), FakeClock(now=0.0)
    with progress(1000, "rotating", stream=out, interval=5, clock=clock) as bar:
        bar.update()
        clock.now = 4.9
        bar.update()
        clock.now = 5.0
        bar.update()
    assert out.getvalue().splitlines() == [
        "rotating: 3/1000 (0%)",
        "rotating: 3/1000 (0%) done in 5.0 s",
    ]


def test_progress_every_defaults_to_a_tenth() -> None:
    out = io.StringIO()
    with progress(20, "x", stream=out, clock=FakeClock(now=0.0)) as bar:
        for _ in range(20):
            bar.update()
    assert len(out.getvalue().splitlines()) == 10 + 1


def test_progress_update_counts_several_steps() -> None:
    out = io.StringIO()
    with progress(100, "bench", stream=out, every=50, clock=FakeClock(now=0.0)) as bar:
        bar.update(60)
        bar.update(40)
    assert out.getvalue().splitlines()[0] == "bench: 60/100 (60%)"


def test_progress_says_where_it_stopped_on_an_error() -> None:
    out = io.StringIO()

    def seed() -> None:
        with progress(10, "seeding", stream=out, every=100, clock=FakeClock(now=0.0)) as bar:
            bar.update(3)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        seed()
    assert out.getvalue() == "seeding: stopped at 3/10 (30%) after 0.0 s\n"


def test_progress_on_a_terminal_draws_a_bar() -> None:
    primary, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w") as terminal, progress(4, "seeding", stream=terminal) as bar:
            for _ in range(4):
                bar.update()
        drawn = _read_all(primary)
    finally:
        os.close(primary)
    assert "\r" in drawn  # redrawn in place, not one line per step
    assert "seeding  [####" in drawn
    assert "4/4" in drawn
    assert "done in" not in drawn


def _read_all(primary: int) -> str:
    """Everything written to the terminal; its other end is closed, so reading ends in EIO."""
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # Linux: EIO once the other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()
