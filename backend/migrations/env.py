"""Alembic environment: the URL comes from the caller (backend.migrate) or Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

import backend.models  # noqa: F401  (registers every table)
from backend.db import make_engine
from backend.models import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    from backend.config import get_settings

    return get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    sqlite = _url().startswith("sqlite")
    engine = make_engine(_url()) if sqlite else make_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        # SQLite alters a table by copying it into a new one and dropping the old: with
        # foreign keys on, dropping a table that other rows refer to fails. The pragma only
        # works outside a transaction, so it goes to the driver's connection directly (no
        # BEGIN); the keys are checked again after.
        raw = conn.connection.dbapi_connection if sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        if raw is not None:
            broken = raw.execute("PRAGMA foreign_key_check").fetchall()
            raw.execute("PRAGMA foreign_keys=ON")
            if broken:
                raise RuntimeError(f"foreign keys broken by the migration: {broken[:5]}")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
