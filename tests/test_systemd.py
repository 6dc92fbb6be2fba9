"""systemd/mailbot.service and mailbot-worker.service as shipped: systemd's own checker
finds nothing to say about them (nor about the port 25 variant the first one's comments
describe), and they stay hardened.

``systemd-analyze verify`` and ``security --offline`` read unit files without a
running systemd, so they work in a container too. Only ExecStart's path is
replaced, by the installed command: verify checks that it is executable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_entrypoint import MAILBOT

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "mailbot.service"
COMMANDS = {"mailbot.service": "serve", "mailbot-worker.service": "worker"}
"""Each unit shipped, and the command it runs."""
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def analyze() -> str:
    """systemd-analyze; without it, skip (fail under CI=true, where it must be)."""
    if ANALYZE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze not found, and CI=true requires it")
        pytest.skip("systemd-analyze not found")
    return ANALYZE


def installed_unit(directory: Path, extra: str = "", name: str = UNIT.name) -> Path:
    """The unit as shipped, run from the installed command; ``extra`` appended."""
    text = UNIT.with_name(name).read_text()
    assert f"/opt/mailbot/venv/bin/mailbot {COMMANDS[name]}\n" in text
    unit = directory / name
    unit.write_text(text.replace("/opt/mailbot/venv/bin/mailbot", str(MAILBOT)) + extra)
    return unit


def verify(analyze: str, unit: Path) -> str:
    """What ``systemd-analyze verify`` says about the unit: nothing when it is right."""
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"{result.stdout}{result.stderr}".strip() or (
        f"exit status {result.returncode}" if result.returncode else ""
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_the_unit_verifies_without_a_warning(analyze: str, tmp_path: Path, name: str) -> None:
    assert verify(analyze, installed_unit(tmp_path, name=name)) == ""


def test_the_port_25_variant_verifies_without_a_warning(analyze: str, tmp_path: Path) -> None:
    """The drop-in the unit's comments give for listening on port 25 itself."""
    commented = re.search(r"port 25 itself.*?\n((?:#   \S+=\S+\n)+)", UNIT.read_text(), re.S)
    assert commented, "the unit no longer says how to listen on port 25"
    lines = [line.removeprefix("#   ") for line in commented[1].splitlines()]
    assert lines == [
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ]
    unit = installed_unit(tmp_path)
    (tmp_path / "mailbot.service.d").mkdir()
    (tmp_path / "mailbot.service.d" / "port25.conf").write_text(
        "[Service]\n" + "\n".join(lines) + "\n"
    )
    assert verify(analyze, unit) == ""


def test_a_mistake_in_the_unit_is_reported(analyze: str, tmp_path: Path) -> None:
    """The checker the tests above rely on does speak up."""
    unit = installed_unit(tmp_path, "ProtectSystm=strict\n")  # after [Install]: misplaced too
    assert "ProtectSystm" in verify(analyze, unit)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_unit_stays_hardened(analyze: str, tmp_path: Path, name: str) -> None:
    text = UNIT.with_name(name).read_text()
    settings = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    for setting in (
        "User=mailbot",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "StateDirectory=mailbot",
        "CapabilityBoundingSet=",
    ):
        assert setting in settings, f"{setting} is missing"
    assert not [s for s in settings if s.startswith("AmbientCapabilities=")]
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            "--no-pager",
            str(installed_unit(tmp_path, name=name)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = rf"Overall exposure level for {re.escape(name)}: ([\d.]+) (\w+)"
    level = re.search(found, result.stdout)
    assert level, result.stdout + result.stderr
    assert float(level[1]) <= 2.0, result.stdout
