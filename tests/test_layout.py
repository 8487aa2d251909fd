"""Who may import whom (docs/architecture.md, "Who imports whom"), checked on the source.

The imports are read with ``ast``, function-level ones included, so a late import cannot
hide a wrong direction.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

APP = REPO_ROOT / "app"


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, relative imports resolved."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # "from app.tenancy import control" imports the subpackage too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(
    files: Iterable[Path], forbidden: tuple[str, ...], root: Path = REPO_ROOT
) -> list[str]:
    """``file: module`` for every import of a module under one of ``forbidden``."""
    found = []
    for path in files:
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for name in sorted(imported_modules(path.read_text(encoding="utf-8"), module)):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                found.append(f"{path.relative_to(root)}: {name}")
    return found


def _modules(folder: Path, *, excluding: Path | None = None) -> list[Path]:
    return [
        path
        for path in sorted(folder.rglob("*.py"))
        if excluding is None or excluding not in path.parents
    ]


def test_layout_serving_never_imports_control() -> None:
    assert violations(_modules(APP / "tenancy" / "serving"), ("app.tenancy.control",)) == []


def test_layout_tenancy_knows_nothing_of_flask_or_config() -> None:
    forbidden = ("flask", "config", "app.hooks", "app.api", "app.cli", "app.errors")
    assert violations(_modules(APP / "tenancy"), forbidden) == []


def test_layout_no_production_module_imports_the_dev_tooling() -> None:
    production = [*_modules(APP, excluding=APP / "dev"), REPO_ROOT / "wsgi.py"]
    production += [REPO_ROOT / "gunicorn.conf.py", *_modules(REPO_ROOT / "config")]
    assert violations(production, ("app.dev",)) == []


def test_layout_command_line_does_not_reach_tenancy_through_the_request_hooks() -> None:
    assert violations(_modules(APP / "cli"), ("app.hooks",)) == []


def test_layout_docker_image_leaves_the_dev_tooling_out() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "app/dev" in ignored


@pytest.mark.parametrize(
    "statement",
    [
        "from app.tenancy.control.roles import role_name",
        "from app.tenancy.control import moving",
        "from app.tenancy import control",
        "import app.tenancy.control.checks",
        "from ..control import ddl",
        "def late():\n    from app.tenancy.control.scram import generate_password\n",
    ],
)
def test_layout_check_catches_a_reverse_import(tmp_path: Path, statement: str) -> None:
    """The check above is not vacuous: a serving module importing control is reported."""
    serving = tmp_path / "app" / "tenancy" / "serving"
    serving.mkdir(parents=True)
    (serving / "sneaky.py").write_text(statement + "\n", encoding="utf-8")
    found = violations([serving / "sneaky.py"], ("app.tenancy.control",), root=tmp_path)
    assert found, statement


@pytest.mark.parametrize(
    "module",
    [
        "app/logs.py",
        "app/worker_exits.py",
        "app/fair_dispatch.py",
        "app/node_share.py",
        "app/presence.py",
    ],
)
def test_layout_modules_the_gunicorn_master_loads_by_path_import_nothing_of_the_app(
    module: str,
) -> None:
    # gunicorn.conf.py loads these from their files so that the master imports none of the
    # app package (a graceful reload then serves new code): they must stay leaves.
    assert violations([REPO_ROOT / module], ("app", "config")) == []
    assert f'_load_by_path("{module}")' in (REPO_ROOT / "gunicorn.conf.py").read_text()
