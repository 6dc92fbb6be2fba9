"""The database: tables, engine and the queries the service runs."""
