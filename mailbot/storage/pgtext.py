"""Text for PostgreSQL, which cannot hold a NUL character in a text value.

Mail carries bytes nobody meant to write: a NUL in a bounce's diagnostic, in
a header, in a forwarded body. On SQLite it is stored like any character;
psycopg refuses it outright, and the whole transaction it came in fails, so
that a message is left unprocessed and unanswered for one stray byte. Every
connection mailbot opens to PostgreSQL therefore sends each NUL in a string
as U+FFFD, the character that stands for what could not be read. The same
string always becomes the same text, so a lookup finds what was stored.

Imported only where PostgreSQL is used: it needs psycopg, and the pipe's
store-only route loads nothing it can do without.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.string import StrDumper, StrDumperUnknown

REPLACEMENT = "\ufffd"


class _Text(StrDumper):
    def dump(self, obj: str) -> Any:
        return super().dump(obj.replace("\x00", REPLACEMENT))


class _Unknown(StrDumperUnknown):
    def dump(self, obj: str) -> Any:
        return super().dump(obj.replace("\x00", REPLACEMENT))


def without_nul(connection: Any) -> None:
    """Make this psycopg connection send NUL in strings as U+FFFD. The dumper
    registered last is the default for ``str``, as in psycopg's own set-up."""
    connection.adapters.register_dumper(str, _Text)
    connection.adapters.register_dumper(str, _Unknown)
