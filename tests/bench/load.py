"""Driving load and measuring: wrk runs, connection sampling, cold first requests, connects."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2

from tests.bench.stack import Tenant

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
_LUA_SAFE = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_WRK_JSON = re.compile(r"^WRK_JSON (\{.*\})$", re.MULTILINE)


def lua_tenants(tenants: Sequence[Tenant]) -> str:
    """A Lua chunk returning ``{{id, api_key}, ...}`` for wrk.lua; refuses odd characters."""
    lines = ["return {"]
    for tenant in tenants:
        for value in (tenant.id, tenant.api_key):
            if not _LUA_SAFE.match(value):
                raise ValueError(f"refusing to write {value!r} into a Lua string")
        lines.append(f'  {{"{tenant.id}", "{tenant.api_key}"}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # socket errors plus HTTP statuses >= 400 (a 503 is an error here)
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str) -> WrkResult:
    """The figures of wrk.lua's ``WRK_JSON`` line; ValueError if there is none."""
    match = _WRK_JSON.search(output)
    if match is None:
        raise ValueError(f"no WRK_JSON line in wrk output:\n{output[-2000:]}")
    data = json.loads(match.group(1))
    errors = sum(data[key] for key in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError(
            "wrk is not installed: `apt-get install wrk` (make bench does it as root)"
        )
    return path


def run_wrk(
    url: str,
    tenants_file: Path,
    *,
    distribution: str,
    method: str,
    path: str,
    seconds: float,
    connections: int,
    threads: int,
    exponent: float = 1.1,
    token: str = "",
) -> WrkResult:
    """One wrk run against ``url`` (every request with ``token``, if given); raises
    RuntimeError if wrk fails."""
    command = [
        wrk_path(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(tenants_file),
        distribution,
        str(exponent),
        method,
        path,
        *([token] if token else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr[-2000:]}")
    return parse_wrk(result.stdout)


class ConnectionSampler:
    """Samples ``pg_stat_activity`` every ``interval`` s; ``peak`` per application prefix.

    The service's backends are named ``tp:...`` (tenants and control plane), the
    baseline's ``baseline:...``.
    """

    QUERY = (
        "SELECT count(*) FILTER (WHERE application_name LIKE 'tp:%%'),"
        " count(*) FILTER (WHERE application_name LIKE 'baseline:%%')"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
    )

    def __init__(self, superuser_url: str, interval: float = 0.1) -> None:
        self._url = superuser_url
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)
        self.peak = {"tp": 0, "baseline": 0}

    def __enter__(self) -> ConnectionSampler:
        self._connection = psycopg2.connect(self._url, connect_timeout=10)
        self._connection.autocommit = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        with self._connection.cursor() as cursor:
            while not self._stop.is_set():
                cursor.execute(self.QUERY)
                service, baseline = cursor.fetchone()
                self.peak["tp"] = max(self.peak["tp"], service)
                self.peak["baseline"] = max(self.peak["baseline"], baseline)
                self._stop.wait(self._interval)


def first_requests(url: str, tenants: Sequence[Tenant], path: str) -> list[float]:
    """Milliseconds of one GET per tenant, in order, on one keep-alive connection.

    Right after a fresh start every request is its tenant's first in that worker: it
    authenticates through the control plane, then connects as the serving way does.
    """
    connection = _connection(url)
    timings = []
    try:
        for tenant in tenants:
            started = time.perf_counter()
            connection.request("GET", path, headers=tenant_headers(tenant))
            response = connection.getresponse()
            response.read()
            timings.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"cold request for tenant {tenant.id} got {response.status}")
    finally:
        connection.close()
    return timings


def get_json(url: str, tenant: Tenant, path: str) -> Any:
    """The JSON body of one GET by ``tenant``; RuntimeError unless it is a 200."""
    connection = _connection(url)
    try:
        connection.request("GET", path, headers=tenant_headers(tenant))
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} for tenant {tenant.id} got {response.status}: {body!r}")
    return json.loads(body)


def tenant_headers(tenant: Tenant) -> dict[str, str]:
    return {"X-Tenant-ID": tenant.id, "Authorization": f"Bearer {tenant.api_key}"}


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)


def connect_times(dsns: dict[str, str], rounds: int) -> dict[str, float]:
    """Median milliseconds of a new connection (connect + close) per DSN, interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in dsns}
    for _ in range(rounds):
        for name, dsn in dsns.items():
            started = time.perf_counter()
            psycopg2.connect(dsn, connect_timeout=10).close()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def requests_on_one_connection(
    url: str,
    tenant: Tenant,
    method: str,
    path: str,
    count: int,
    *,
    warm: int = 0,
    after_warm: Callable[[], object] | None = None,
) -> None:
    """``warm`` then ``count`` requests by ``tenant`` on one keep-alive connection, so one
    worker; ``after_warm`` runs in between. Each request must succeed."""
    connection = _connection(url)
    headers = tenant_headers(tenant)
    body = None
    if method == "POST":
        headers["Content-Type"] = "application/json"
        body = json.dumps({"first_name": "Round", "last_name": "Trip"})
    try:
        for number in range(warm + count):
            if number == warm and after_warm is not None:
                after_warm()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path} got {response.status}")
    finally:
        connection.close()
