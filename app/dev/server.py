"""What ``make run`` executes: a local database, dev secrets, migrations, demo data, gunicorn.

Steps (DESIGN section 2), each printed as it happens:

1. unless ``APP_DATABASE_URL`` is set, a project-local PostgreSQL cluster in ``var/pg``
   (``APP_PG_DATADIR`` to move it): initdb once, start on the port used last time if it
   is free (else any free port), and an owner role ``tenantpool`` owning database
   ``tenantpool``;
2. development secrets generated once into ``var/dev.env`` (mode 0600) and reused; the
   local cluster's URL is written there too (``APP_DATABASE_URL``), so a second terminal
   that sources the file runs every ``flask`` command against it (README, Command line);
3. the child environment: ours, plus ``var/dev.env`` (explicit ``APP_*`` win), plus the
   local cluster's URL;
4. ``flask db upgrade``; 5. ``flask seed-tenants`` with demo users, products and orders,
   reusing the API keys ``var/tenants.json`` holds (the command prints ids and names only;
   this server prints the keys from the file, each time);
6. a development identity provider (``app/dev/identity.py``: a key under ``var/``, its JWKS
   served from this process) unless ``APP_JWT_JWKS_URL`` is set;
7. the URL, each demo tenant's API key and two demo JWTs, curl lines that work as-is;
8. gunicorn in the foreground.

Ctrl-C (or SIGTERM) stops gunicorn, then the cluster if this command started it. The
development secrets (encryption key, admin token, passwords) are never printed, only where
they are kept; the demo tenants' API keys and demo tokens are, being what a person needs next.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from app.dev.cluster import LocalCluster
from app.dev.errors import ClusterError, PostgresNotFound
from app.dev.identity import DevIdentityProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
VAR = REPO_ROOT / "var"
DEV_ENV = VAR / "dev.env"
PORT_FILE = VAR / "pg.port"
TENANTS_FILE = VAR / "tenants.json"
DEMO_TOKENS_FILE = VAR / "demo-tokens.json"
OWNER = "tenantpool"
DATABASE = "tenantpool"
DEFAULT_BIND = "127.0.0.1:8080"
_SUPERUSER_PW_NAME = "DEV_PG_SUPERUSER_PASSWORD"
_OWNER_PW_NAME = "DEV_PG_OWNER_PASSWORD"
_GUNICORN_GRACE_SECONDS = 30
DATABASE_URL_NAME = "APP_DATABASE_URL"
SECOND_TERMINAL = "source .venv/bin/activate; set -a; . var/dev.env; set +a"
"""What README's "Command line" tells a second terminal to run before any ``flask`` command."""
DEMO_ROWS = ("--users-per-tenant", "5", "--products-per-tenant", "4", "--orders-per-tenant", "3")


class DevServerError(RuntimeError):
    """A step of ``make run`` failed; the message is one line saying what to do."""


def say(message: str) -> None:
    """Progress for the person at the terminal (never a secret value)."""
    print(f"devserver: {message}", flush=True)


def _generators() -> dict[str, str]:
    """Fresh values for every development secret, in the order written to dev.env."""
    return {
        "APP_ENCRYPTION_KEYS": f"dev1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "dev1",
        "APP_ADMIN_TOKEN": secrets.token_urlsafe(32),
        _SUPERUSER_PW_NAME: secrets.token_urlsafe(32),
        _OWNER_PW_NAME: secrets.token_urlsafe(32),
    }


def load_dev_env(path: Path = DEV_ENV) -> dict[str, str]:
    """The development secrets, generating (and saving, mode 0600) those still missing."""
    values = read_dev_env(path)
    missing = {k: v for k, v in _generators().items() if k not in values}
    if missing:
        values.update(missing)
        _write_dev_env(path, values)
        say(f"generated development secrets: {', '.join(missing)} (in {_shown(path)})")
    path.chmod(0o600)
    return values


def read_dev_env(path: Path = DEV_ENV) -> dict[str, str]:
    """``NAME=value`` lines of ``path`` (none if it does not exist)."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip()
    return values


def record_database_url(url: str | None, path: Path = DEV_ENV) -> None:
    """Keep the local cluster's URL in ``path`` for other terminals (None: drop it).

    Only the local cluster's: an ``APP_DATABASE_URL`` given from outside stays where it
    came from, out of var/.
    """
    values = read_dev_env(path)
    if values.get(DATABASE_URL_NAME) == url:
        return
    values.pop(DATABASE_URL_NAME, None)
    if url is not None:
        values[DATABASE_URL_NAME] = url
    _write_dev_env(path, values)


def _write_dev_env(path: Path, values: Mapping[str, str]) -> None:
    """``values`` as a shell-sourceable file, mode 0600 from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# Development secrets and the local cluster's URL, written by `make run`; never use\n"
        "# them elsewhere. A second terminal: set -a; . var/dev.env; set +a\n"
    )
    text += "".join(f"{name}={value}\n" for name, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def wants_local_cluster(environ: Mapping[str, str], dev_env: Mapping[str, str]) -> bool:
    """No ``APP_DATABASE_URL`` of our own, or only the one var/dev.env gave this shell."""
    given = environ.get(DATABASE_URL_NAME)
    return not given or given == dev_env.get(DATABASE_URL_NAME)


def child_environment(
    environ: Mapping[str, str], dev_env: Mapping[str, str], database_url: str | None
) -> dict[str, str]:
    """Our environment plus the dev secrets (explicit APP_* win) plus the cluster's URL."""
    env = dict(environ)
    for name, value in dev_env.items():
        if name.startswith("APP_") and name != DATABASE_URL_NAME:
            env.setdefault(name, value)
    if database_url is not None:
        env[DATABASE_URL_NAME] = database_url
    env.setdefault("APP_ENV", "development")
    return env


def start_local_cluster(dev_env: Mapping[str, str]) -> tuple[LocalCluster, bool, str]:
    """Step 1: the cluster, whether this call started it, and the owner's URL."""
    datadir = Path(os.environ.get("APP_PG_DATADIR") or VAR / "pg").absolute()
    # Finding the server binaries happens here; PostgresNotFound says how to install them.
    cluster = LocalCluster(datadir, superuser_password=dev_env[_SUPERUSER_PW_NAME])
    if not cluster.initialized:
        say(f"initializing a PostgreSQL cluster in {_shown(datadir)} (once)")
        cluster.init(dev_env[_SUPERUSER_PW_NAME])
    started = cluster.start(_saved_port())  # a saved port that is taken now gets replaced
    try:
        PORT_FILE.write_text(f"{cluster.port}\n")
        state = "started" if started else "already running"
        say(f"PostgreSQL {state} on 127.0.0.1:{cluster.port} (log: {_shown(cluster.log_path)})")
        owner_url = cluster.bootstrap_owner(OWNER, dev_env[_OWNER_PW_NAME], DATABASE)
    except BaseException:
        if started:
            cluster.stop()
        raise
    return cluster, started, owner_url


def _saved_port() -> int | None:
    try:
        text = PORT_FILE.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def run_step(description: str, args: list[str], env: Mapping[str, str]) -> None:
    """Run one flask command in the foreground; raise DevServerError if it fails."""
    say(description)
    result = subprocess.run(args, env=dict(env), cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise DevServerError(f"`{' '.join(args[1:])}` failed (exit {result.returncode})")


def demo_tenants(tenants_file: Path = TENANTS_FILE) -> list[dict[str, str]]:
    """The seeded demo tenants (id, name, api_key); [] if there is no usable seed file."""
    try:
        tenants = json.loads(tenants_file.read_text())
        return [{key: str(t[key]) for key in ("id", "name", "api_key")} for t in tenants]
    except (OSError, ValueError, LookupError, TypeError):
        return []


def curl_line(bind: str, tenants_file: Path = TENANTS_FILE) -> str | None:
    """A curl command for the first seeded tenant, or None if there is no seed file."""
    tenants = demo_tenants(tenants_file)
    if not tenants:
        return None
    tenant_id, api_key = tenants[0]["id"], tenants[0]["api_key"]
    return (
        f'curl -s -H "X-Tenant-ID: {tenant_id}" -H "Authorization: Bearer {api_key}" '
        f"{base_url(bind)}/v1/users"
    )


def base_url(bind: str) -> str:
    """The URL to reach gunicorn bound on ``bind`` from this machine."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 - we only read the bind, to connect
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def serve(env: Mapping[str, str]) -> int:
    """Step 7: gunicorn in the foreground until it exits or we are interrupted."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        env=dict(env),
        cwd=REPO_ROOT,
    )
    try:
        return process.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached gunicorn too; a SIGTERM sent to us alone did not.
        say("stopping gunicorn")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_GUNICORN_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 0


def _tell_where_things_are(bind: str, *, local: bool, identity: DevIdentityProvider | None) -> None:
    say(f"serving on {base_url(bind)} (Ctrl-C stops everything)")
    say(
        f"development secrets are in {_shown(DEV_ENV)}; the demo tenants' ids and API keys in "
        f"{_shown(TENANTS_FILE)} (kept across restarts):"
    )
    # A development terminal: the demo keys are what a person needs next.
    for tenant in demo_tenants():
        say(f"    {tenant['name']}  X-Tenant-ID: {tenant['id']}  API key: {tenant['api_key']}")
    if local:
        say(f"flask commands in another terminal: {SECOND_TERMINAL}, then e.g.")
        say("    flask --app wsgi tenancy check")
    line = curl_line(bind)
    if line:
        say(f"try:\n    {line}")
    tenants = demo_tenants()
    if identity is not None and tenants:
        say(
            f"end users' JWTs (development key in {_shown(VAR / 'dev-jwt-key.pem')}, "
            f"also in {_shown(DEMO_TOKENS_FILE)}):"
        )
        for tokens in identity.write_demo_tokens(tenants, DEMO_TOKENS_FILE):
            say(f"    {tokens['name']}  admin: {tokens['admin']}")
            say(f"    {tokens['name']}  member (sees its own orders only): {tokens['member']}")
        say(
            f'    curl -s -H "Authorization: Bearer <JWT>" {base_url(bind)}/v1/orders   '
            "(no X-Tenant-ID: the token names its tenant)"
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run the whole ``make run`` sequence; return the process exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    python = sys.executable
    cluster: LocalCluster | None = None
    started = False
    identity: DevIdentityProvider | None = None
    try:
        dev_env = load_dev_env()
        database_url = None
        if wants_local_cluster(os.environ, dev_env):
            cluster, started, database_url = start_local_cluster(dev_env)
        else:
            say("using the database in APP_DATABASE_URL (no local cluster)")
        record_database_url(database_url)
        env = child_environment(os.environ, dev_env, database_url)
        if "APP_JWT_JWKS_URL" not in env:
            identity = DevIdentityProvider(VAR)
            env = {**env, **identity.env}
        flask = [python, "-m", "flask", "--app", "wsgi"]
        run_step("applying migrations", [*flask, "db", "upgrade"], env)
        TENANTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        seed = ["--count", "3", *DEMO_ROWS, "--output", str(TENANTS_FILE), "--keep-keys"]
        run_step("seeding demo tenants", [*flask, "seed-tenants", *seed], env)
        bind = env.get("APP_BIND") or DEFAULT_BIND
        _tell_where_things_are(bind, local=database_url is not None, identity=identity)
        return serve(env)
    except (PostgresNotFound, ClusterError, DevServerError) as exc:
        print(f"devserver: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted before serving: the conventional 128 + SIGINT
    finally:
        if identity is not None:
            identity.close()
        if cluster is not None and started:
            say("stopping PostgreSQL")
            cluster.stop()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, for shorter messages."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
