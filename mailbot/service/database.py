"""The database as commands see it: its schema, and the errors that mean it is out of reach.

Adapters catch these names instead of the database library's, so that they never
import storage.
"""

from __future__ import annotations

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import Engine

from mailbot.config import Settings
from mailbot.errors import in_one_line
from mailbot.storage import engine as db

SchemaOutOfDate = db.SchemaOutOfDate
"""The database needs ``mailbot init`` before this version can use it."""
DatabaseUnavailable = db.DatabaseUnavailable
"""The database cannot be reached or opened at all."""
DatabaseDown = sqlalchemy.exc.OperationalError
"""A query run outside the service failed because the database went away (the
service itself raises ``errors.StorageUnavailable``): try again later."""


class SchemaRefused(Exception):
    """The database refused to create or upgrade the schema: not an outage, so
    trying again will not help until its cause (most often the role's
    privileges) is fixed."""


INSUFFICIENT_PRIVILEGE = "42501"
"""PostgreSQL's SQLSTATE for a statement the role may not run."""


def upgrade_schema(settings: Settings) -> str:
    """Create or upgrade the schema of the configured database; returns its revision."""
    engine = db.make_engine(settings.database)
    try:
        return db.upgrade(engine)
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc, DatabaseDown):
            raise  # unreachable, or went away: the outage's own message
        raise SchemaRefused(_refusal(exc)) from None
    finally:
        engine.dispose()


def _refusal(exc: sqlalchemy.exc.DBAPIError) -> str:
    said = f"the database refused the schema: {in_one_line(exc.orig or exc)}"
    if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
        return (
            f"{said}: the role in [database] url must be allowed to create tables"
            " (make it the owner of the database, or grant it CREATE on the schema)"
        )
    return said


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the schema this version uses."""
    db.check_schema(engine)


def location(settings: Settings) -> str:
    """The database URL without its password, for an error message."""
    return sqlalchemy.make_url(settings.database.url).render_as_string(hide_password=True)


def outage(error: Exception) -> str:
    """What the database driver said about a DatabaseDown error."""
    return str(getattr(error, "orig", error))
