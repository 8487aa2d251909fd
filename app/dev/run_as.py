"""The unprivileged account server binaries run as when we are root.

PostgreSQL and PgBouncer refuse to run as root. When we are root (CI, containers) they run
as the ``postgres`` system user (else ``nobody``), which must own their files and be able
to traverse every directory above them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from app.dev.errors import ClusterError


class RunAs:
    """The unprivileged account server binaries (PostgreSQL, PgBouncer) run as when we are root."""

    def __init__(self, name: str) -> None:
        entry = pwd.getpwnam(name)
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.groups = set(os.getgrouplist(name, entry.pw_gid))

    @classmethod
    def for_root(cls) -> RunAs:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return cls(name)
        raise ClusterError(
            "running as root, and neither a `postgres` nor a `nobody` user exists to run "
            "PostgreSQL as: create one (`useradd --system postgres`) or run as another user"
        )

    @classmethod
    def when_root(cls) -> RunAs | None:
        """The account to drop to if we are root, else None (run as ourselves)."""
        return cls.for_root() if os.geteuid() == 0 else None

    def can_enter(self, directory: Path) -> bool:
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    def first_unenterable(self, directory: Path) -> Path | None:
        """The first of ``directory`` and its parents this account cannot enter, if any."""
        for part in [directory, *directory.parents]:
            if not self.can_enter(part):
                return part
        return None

    def give(self, path: Path) -> None:
        """Make ``path`` this account's."""
        os.chown(path, self.uid, self.gid)

    def subprocess_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that run the child as this account."""
        # extra_groups=[] drops root's supplementary groups.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}
