"""mailbot's database migrations (Alembic); shipped in the package as ``mailbot.migrations``."""

from __future__ import annotations

import re
from pathlib import Path

VERSIONS = Path(__file__).resolve().parent / "versions"
_REVISION = re.compile(r"^revision\b[^=\n]*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\b[^=\n]*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def head() -> str | None:
    """The newest migration's revision, read from the migration files without
    Alembic (cheap enough for every command); None when they are not one line
    of revisions, for the caller to ask Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        for path in VERSIONS.glob("*.py"):
            text = path.read_text(encoding="utf-8")
            revisions.update(_REVISION.findall(text))
            parents.update(_DOWN.findall(text))
    except OSError:
        return None
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
