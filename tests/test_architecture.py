"""The shape of the code, asserted: the pure core imports no I/O."""

from __future__ import annotations

import ast
from importlib.resources import files
from pathlib import Path

import pytest

import mailbot

PURE = [
    "workflow",
    "domain",
    "mailparse",
    "mailparse_sender",
    "authentication",
    "commands",
    "tokens",
    "errors",
    "render",
    "compose",
]
IO_LIBRARIES = {
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "aiosmtpd",
    "smtplib",
    "imaplib",
    "imapclient",
    "starlette",
    "uvicorn",
    "socket",
    "apscheduler",
    "psycopg",
    "sqlite3",
    "asyncio",
    "subprocess",
    "mailbot.db",
    "mailbot.store",
    "mailbot.service",
    "mailbot.models",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", PURE)
def test_the_core_does_no_io(module: str) -> None:
    path = Path(mailbot.__file__).parent / f"{module}.py"
    forbidden = {
        name
        for name in imports_of(path)
        if any(name == lib or name.startswith(lib + ".") for lib in IO_LIBRARIES)
    }
    assert not forbidden, f"{module} imports {forbidden}"


def test_the_workflow_reads_no_clock() -> None:
    source = (Path(mailbot.__file__).parent / "workflow.py").read_text()
    assert ".now(" not in source
    assert "import time" not in source


def test_templates_and_migrations_ship_inside_the_package() -> None:
    templates = files("mailbot.templates")
    assert templates.joinpath("mail/en/validation-requested.txt.j2").is_file()
    assert templates.joinpath("mail/fr/error.html.j2").is_file()
    migrations = files("mailbot.migrations")
    assert migrations.joinpath("env.py").is_file()
    assert any(p.name.endswith(".py") for p in migrations.joinpath("versions").iterdir())


def test_no_module_shadows_the_standard_library() -> None:
    names = {p.stem for p in Path(mailbot.__file__).parent.rglob("*.py")}
    assert not names & {"email", "token", "queue", "secrets", "logging", "json", "smtplib"}
