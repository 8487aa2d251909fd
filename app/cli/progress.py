"""Progress of long commands: a bar on a terminal, plain periodic lines in logs and CI.

Usage::

    with progress(len(items), "re-encrypting tenants") as bar:
        for item in items:
            work(item)
            bar.update()

On a TTY this is ``click.progressbar``. Anywhere else (a pipe, a file, a container log) a
bar's carriage returns would make one unreadable line, so a line ``label: done/total
(pct%)`` is written every ``every`` items or ``interval`` seconds, whichever comes first,
and a last line when the block ends (``done in N s``, or ``stopped at`` on an exception).
Progress goes to stderr by default, so stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO

import click


class Progress(Protocol):
    """What the block gets: ``update(n)`` after ``n`` more items are done."""

    def update(self, n_steps: int = 1) -> None: ...


@contextlib.contextmanager
def progress(
    length: int,
    label: str,
    *,
    stream: TextIO | None = None,
    every: int | None = None,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    """Report progress of ``length`` items on ``stream`` (default: stderr).

    ``every`` defaults to a tenth of ``length``; ``every``, ``interval`` and ``clock``
    only matter off a terminal.
    """
    out = sys.stderr if stream is None else stream
    if _isatty(out):
        with click.progressbar(
            length=length, label=label, file=out, show_pos=True, show_eta=True
        ) as bar:
            yield _Bar(bar)
        return
    lines = _Lines(length, label, out, every or max(1, math.ceil(length / 10)), interval, clock)
    try:
        yield lines
    except BaseException:
        lines.close(stopped=True)
        raise
    lines.close(stopped=False)


class _ClickBar(Protocol):
    def update(self, n_steps: int) -> None: ...


class _Bar:
    """Gives click's bar the ``update()`` default of one step."""

    def __init__(self, bar: _ClickBar) -> None:
        self._bar = bar

    def update(self, n_steps: int = 1) -> None:
        self._bar.update(n_steps)


class _Lines:
    """Writes a line when ``every`` items or ``interval`` seconds passed since the last one."""

    def __init__(
        self,
        length: int,
        label: str,
        out: TextIO,
        every: int,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._length, self._label, self._out = length, label, out
        self._every, self._interval, self._clock = every, interval, clock
        self._done = self._reported = 0
        self._started = self._last = clock()

    def update(self, n_steps: int = 1) -> None:
        self._done += n_steps
        now = self._clock()
        if self._done - self._reported >= self._every or now - self._last >= self._interval:
            self._write(self._position())
            self._reported, self._last = self._done, now

    def close(self, *, stopped: bool) -> None:
        elapsed = self._clock() - self._started
        if stopped:
            self._write(f"stopped at {self._position()} after {elapsed:.1f} s")
        else:
            self._write(f"{self._position()} done in {elapsed:.1f} s")

    def _position(self) -> str:
        percent = 100 * self._done // self._length if self._length else 100
        return f"{self._done}/{self._length} ({percent}%)"

    def _write(self, text: str) -> None:
        click.echo(f"{self._label}: {text}", file=self._out)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
