"""Alembic environment: the database URL comes from the one settings object."""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

from app.db import sqlalchemy_url
from app.models import metadata
from app.settings import load_settings

config = context.config
url = config.attributes.get("database_url") or load_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(url), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # psycopg takes both URLs and key=value conninfo strings; SQLAlchemy only URLs
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
