"""The service's own per-request CPU: py-spy on each worker, samples grouped into areas.

``py-spy record --gil`` keeps a sample only while its thread holds the GIL, so waits (for
PostgreSQL, for the client) are not in it: what is left is the Python a request costs.
Only request threads count: stacks through gunicorn's ``ThreadWorker.handle``.

Each sample is charged to one area, that of its innermost frame that belongs to one
(frames of the standard library outside any area are charged to their caller's), and to
the function through which the request entered that area, so an item is the inclusive
time of that function within its area. Each item also names its hottest innermost frame:
where in the area its samples ended most often (for the database, the C call of psycopg2).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

AREAS = (
    ("authentication", r"app/tenancy/serving/(resolve|directory)\.py|^Tenancy\.authenticate "),
    ("logging", r"app/(logs|request_log)\.py|[(/]logging/"),
    ("metrics", r"app/(metrics|tenancy/serving/observer)\.py|prometheus_client/"),
    ("query parsing", r"^(query_args|_load_query) .*app/api/body\.py|urllib/parse\.py"),
    ("serialisation", r"app/(schemas/|json_provider\.py)|marshmallow/|[(/]json/"),
    ("database", r"app/(tenancy/|dbwait\.py|db\.py)|sqlalchemy/|psycopg2/"),
    ("views", r"app/(api/|errors\.py)"),
    ("framework (Flask, Werkzeug)", r"flask/|werkzeug/"),
    ("HTTP server (gunicorn)", r"gunicorn/"),
)
"""Area of a frame (``function (path:line)``): the first whose pattern it matches."""
_AREA_PATTERNS = [(area, re.compile(pattern)) for area, pattern in AREAS]
OTHER = "other"
_FRAME = re.compile(r"^(?P<function>.+) \((?P<path>.+):\d+\)$")
_REQUEST_THREAD = re.compile(r"(^|\.)handle \(.*gunicorn/workers/gthread\.py:")


@dataclass(frozen=True)
class ProfileItem:
    area: str
    function: str  # ``function (path)``
    share: float  # of the request-thread samples
    hottest: str  # the innermost frame in the area seen most often below ``function``
    hottest_share: float


@dataclass
class Profile:
    """What py-spy saw of the request threads; ``note`` says why when it saw nothing."""

    samples: int = 0  # request-thread samples
    all_samples: int = 0  # every thread's
    areas: dict[str, float] = field(default_factory=dict)  # area -> share, largest first
    items: list[ProfileItem] = field(default_factory=list)  # largest first
    note: str = ""


def area_of(frame: str) -> str | None:
    """The area of one frame, or None for a frame of no area (charged to its caller's)."""
    for area, pattern in _AREA_PATTERNS:
        if pattern.search(frame):
            return area
    return None


def charge(frames: Sequence[str]) -> tuple[str, str, str]:
    """(area, entry function, innermost function) of one stack, root first, as the module
    docstring says."""
    areas = [area_of(frame) for frame in frames]
    inner = next((i for i in range(len(frames) - 1, -1, -1) if areas[i] is not None), None)
    if inner is None:
        return OTHER, _function(frames[-1]), _function(frames[-1])
    area, entry = areas[inner], inner
    for outer in range(inner - 1, -1, -1):
        if areas[outer] == area:
            entry = outer
        elif areas[outer] is not None:
            break
    return str(area), _function(frames[entry]), _function(frames[inner])


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["path"]
    # Library paths are short already (py-spy strips sys.path); ours may be absolute.
    if "/app/" in path:
        path = "app/" + path.rsplit("/app/", 1)[1]
    return f"{match['function']} ({path})"


def aggregate(raw_outputs: Iterable[str], top: int = 12) -> Profile:
    """A :class:`Profile` of ``py-spy record -f raw`` outputs (``stack count`` lines)."""
    areas: Counter[str] = Counter()
    items: Counter[tuple[str, str]] = Counter()
    innermost: dict[tuple[str, str], Counter[str]] = {}
    total = 0
    for output in raw_outputs:
        for line in output.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = [frame for frame in stack.split(";") if _FRAME.match(frame)]
            if not any(_REQUEST_THREAD.search(frame) for frame in frames):
                continue
            area, function, inner = charge(frames)
            areas[area] += samples
            items[(area, function)] += samples
            innermost.setdefault((area, function), Counter())[inner] += samples
    request = sum(areas.values())
    if not request:
        return Profile(all_samples=total, note="py-spy recorded no sample of a request thread")
    return Profile(
        samples=request,
        all_samples=total,
        areas={area: n / request for area, n in areas.most_common()},
        items=[
            ProfileItem(
                area, function, n / request, *_hottest(innermost[(area, function)], request)
            )
            for (area, function), n in items.most_common(top)
        ],
    )


def _hottest(counts: Counter[str], request: int) -> tuple[str, float]:
    function, n = counts.most_common(1)[0]
    return function, n / request


def py_spy_path() -> str | None:
    """py-spy of this virtualenv (requirements-dev.txt), else one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(
    pids: Sequence[int], seconds: float, directory: Path, during: Callable[[], object]
) -> Profile:
    """py-spy on every pid for ``seconds`` while ``during()`` runs; never raises for py-spy.

    A pid py-spy cannot attach to (no ptrace permission, say) is left out and named in
    the profile's note; with none left the profile is empty and the note says why.
    """
    binary = py_spy_path()
    if binary is None:
        during()
        return Profile(note="py-spy is not installed (pip install -r requirements-dev.txt)")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("py-spy-*.txt"):  # the raw files left are this run's
        stale.unlink()
    running = []
    for pid in pids:
        output = directory / f"py-spy-{pid}.txt"
        command = [binary, "record", "--gil", "-f", "raw", "--nonblocking", "-r", "200"]
        command += ["-d", str(max(1, round(seconds))), "-p", str(pid), "-o", str(output)]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        running.append((pid, output, process))
    during()
    outputs, failures = [], []
    for pid, output, process in running:
        try:
            _, stderr = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode == 0 and output.is_file():
            outputs.append(output.read_text())
        else:
            lines = (stderr or "no output").strip().splitlines() or ["no output"]
            failures.append(f"pid {pid}: {lines[-1]}")
    profile = aggregate(outputs)
    if failures:
        attached = f"attached to {len(outputs)} of {len(pids)} workers"
        profile.note = f"py-spy {attached}; " + "; ".join(failures)
    return profile
