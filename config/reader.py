"""Reading ``APP_*`` values: from the environment or a ``_FILE``, parsed, one-line errors.

Our own small reader rather than pydantic-settings: it keeps the ``APP_<NAME>_FILE``
convention (Docker secrets, re-read on reload) and one-line errors naming the variable,
which pydantic's multi-line validation reports would need a layer of their own to give.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line for the operator."""


class Reader:
    """Reads ``NAME``, or the file named by ``NAME_FILE`` (the Docker secrets convention).

    A file is read again at every start, so a keyring kept in files changes with a
    graceful reload (``kill -HUP`` gunicorn's master) and no change to the environment.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def require(self, name: str, parse: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if not raw.strip():
            raise ConfigError(f"{name}: is required but not set (nor {name}_FILE)")
        return self._parse(name, raw, parse)

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if not raw.strip():
            return default
        return self._parse(name, raw, parse)

    def _raw(self, name: str) -> str:
        path = self._env.get(f"{name}_FILE", "").strip()
        if not path:
            return self._env.get(name, "")
        if self._env.get(name, "").strip():
            raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"{name}_FILE: cannot read {path}: {reason}") from None

    @staticmethod
    def _parse(name: str, raw: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(raw.strip())
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}: {exc}") from None


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}, not {raw!r}")
        return raw

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,12}", raw):
            raise ValueError(f"must be a whole number between {low} and {high}")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value

    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", raw):
            raise ValueError(f"must be a number of seconds between {low:g} and {high:g}")
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, not {value:g}")
        return value

    return parse
