"""mailbot's database migrations (Alembic); shipped in the package as ``mailbot.migrations``."""
