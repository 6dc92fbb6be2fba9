"""The database as commands see it: its schema, and the errors that mean it is out of reach.

Adapters catch these names instead of the database library's, so that they never
import storage.
"""

from __future__ import annotations

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import Engine

from mailbot.config import Settings
from mailbot.storage import engine as db

SchemaOutOfDate = db.SchemaOutOfDate
"""The database needs ``mailbot init`` before this version can use it."""
DatabaseUnavailable = db.DatabaseUnavailable
"""The database cannot be reached or opened at all."""
DatabaseDown = sqlalchemy.exc.OperationalError
"""A query run outside the service failed because the database went away (the
service itself raises ``errors.StorageUnavailable``): try again later."""


def upgrade_schema(settings: Settings) -> str:
    """Create or upgrade the schema of the configured database; returns its revision."""
    engine = db.make_engine(settings.database)
    try:
        return db.upgrade(engine)
    finally:
        engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the schema this version uses."""
    db.check_schema(engine)


def location(settings: Settings) -> str:
    """The database URL without its password, for an error message."""
    return sqlalchemy.make_url(settings.database.url).render_as_string(hide_password=True)


def outage(error: Exception) -> str:
    """What the database driver said about a DatabaseDown error."""
    return str(getattr(error, "orig", error))
