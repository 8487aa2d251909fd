"""What a forked child must reset: the parent's threads do not run there, its connections
are not the child's to use.

gunicorn forks its workers, and tests and one-shot commands fork children of processes that
built registries, pools and threads. Every such object registers with :func:`reset_in_child`
when it is made; in a child, right after the fork, each live one's ``_reset_after_fork()``
runs (its own locks, threads and connections, nothing shared). Held weakly: registering
keeps nothing alive.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["reset_in_child"]


class _Resettable(Protocol):
    def _reset_after_fork(self) -> None: ...


_LIVE: weakref.WeakSet[_Resettable] = weakref.WeakSet()


def reset_in_child(obj: _Resettable) -> None:
    """Have ``obj._reset_after_fork()`` run in every child forked while ``obj`` lives."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
