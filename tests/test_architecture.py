"""The shape of the code, asserted: the pure core imports no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

import mailbot

PACKAGE = Path(mailbot.__file__).parent
PURE_CORE = [
    "domain",
    "workflow",
    "tokens",
    "addresses",
    "errors",
    "commands",
    "mailparse",
    "mailkeys",
]
"""Modules and packages with no I/O: the database, the network, asyncio, the web
framework and the clock stay out of them, so they are tested as plain functions."""
ADAPTERS = ["adapters", "cli", "views", "runtime"]
"""They translate a protocol into calls of the service, and never reach storage."""

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
    "time",
    "mailbot.clock",
    "mailbot.storage",
    "mailbot.service",
    "mailbot.outgoing",
    "mailbot.adapters",
}


def modules_of(names: list[str]) -> list[Path]:
    """Every source file of the named modules and packages, subpackages included."""
    found: list[Path] = []
    for name in names:
        package = PACKAGE / name
        found += sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{name}.py"]
    return found


def label(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


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


def reaches(path: Path, libraries: set[str]) -> set[str]:
    return {
        name
        for name in imports_of(path)
        if any(name == lib or name.startswith(lib + ".") for lib in libraries)
    }


@pytest.mark.parametrize("path", modules_of(PURE_CORE), ids=label)
def test_the_core_does_no_io(path: Path) -> None:
    assert not reaches(path, IO_LIBRARIES), f"{label(path)} imports {reaches(path, IO_LIBRARIES)}"
    assert ".now(" not in path.read_text(), f"{label(path)} reads the clock"


@pytest.mark.parametrize("path", modules_of(ADAPTERS), ids=label)
def test_adapters_talk_to_the_service_not_to_storage(path: Path) -> None:
    assert not reaches(path, {"mailbot.storage", "sqlalchemy", "sqlmodel"}), label(path)


@pytest.mark.parametrize("path", modules_of(["storage", "outgoing"]), ids=label)
def test_data_flows_one_way(path: Path) -> None:
    """Storage and outgoing mail serve the service; they never call back up into it."""
    upward = {"mailbot.service", "mailbot.adapters", "mailbot.cli", "mailbot.runtime"}
    assert not reaches(path, upward), f"{label(path)} imports {reaches(path, upward)}"


def test_the_walk_sees_every_package() -> None:
    """A new package must be placed on purpose: in the core, an adapter, or the rest."""
    packages = {
        str(p.parent.relative_to(PACKAGE))
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE
    }
    code = {"adapters", "adapters/web", "cli", "commands", "outgoing", "service", "storage"}
    parsing = {"mailparse", "mailparse/bounces"}
    data = {"migrations", "templates"}  # the schema's versions; the mails and pages
    assert packages == code | parsing | data


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


HEAVY = {"alembic", "aiosmtpd", "starlette", "uvicorn", "apscheduler", "imapclient", "playwright"}
"""What the servers, the migrations and the agency mailbox need: only ``serve``,
``init`` and ``imap check`` pay for them."""
APPLICATION = {"sqlalchemy", "sqlmodel", "pydantic", "pydantic_settings", "jinja2", "flufl"}
"""What the service needs: the pipe's store-only route goes without."""


def loaded_by(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing ``modules``
    (from the installed package: ``-P`` keeps the source tree off the path)."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", code, *modules], capture_output=True, check=True, text=True
    )
    return {name.split(".")[0] for name in result.stdout.split()}


@pytest.mark.parametrize(
    ("modules", "absent"),
    [
        (["mailbot.cli", "mailbot.cli.parser"], HEAVY | APPLICATION),
        (["mailbot.cli", "mailbot.cli.piping", "mailbot.intake"], HEAVY | APPLICATION),
        (["mailbot.cli", "mailbot.cli.acting", "mailbot.config"], HEAVY),
        (["mailbot.cli", "mailbot.cli.reading", "mailbot.service.database"], HEAVY),
    ],
    ids=["help", "process-store-only", "process", "listings"],
)
def test_a_command_imports_only_what_it_needs(modules: list[str], absent: set[str]) -> None:
    """``mailbot --help`` and ``mailbot process`` start without the servers'
    libraries; ``process --store-only`` without the application's either."""
    assert not loaded_by(*modules) & absent, loaded_by(*modules) & absent
