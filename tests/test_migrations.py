"""Alembic is the only way the schema changes: every revision upgrades from nothing to
head, downgrades back to nothing, and upgrades again, on a scratch database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg.conninfo import make_conninfo

from app.db import ROOT, ensure_database, migrate
from app.settings import Settings


@pytest.fixture
def scratch(base_settings: Settings) -> Iterator[Settings]:
    name = f"hr_migr_{uuid.uuid4().hex[:8]}"
    s = base_settings.with_(database_url=make_conninfo(base_settings.database_url, dbname=name))
    ensure_database(s)
    yield s
    admin = make_conninfo(base_settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alembic(s: Settings) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = s.database_url
    return cfg


def _state(s: Settings) -> tuple[set[str], list[str] | None]:
    with psycopg.connect(s.database_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') "
                "AND c.relname NOT LIKE 'pings_%%' "
                # PostGIS's own (the extension outlives the schema's downgrade)
                "AND c.relname NOT IN ('spatial_ref_sys', 'geometry_columns', 'geography_columns')"
            )
        }
        row = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'ping_minutes'"
        ).fetchone()
    return tables, (row[0] if row else None)


def test_upgrade_downgrade_upgrade(scratch: Settings) -> None:
    migrate(scratch)
    tables, options = _state(scratch)
    assert {"pings", "ping_minutes", "minute_stats", "sink_offsets", "alembic_version"} <= tables
    assert {"cell_minutes", "driver_tracks_hourly", "cell_hour_rank"} <= tables
    assert options == ["fillfactor=50"]  # 0004: room for in-place rollup updates

    command.downgrade(_alembic(scratch), "0003")
    assert _state(scratch)[1] is None

    command.downgrade(_alembic(scratch), "base")
    assert _state(scratch)[0] == {"alembic_version"}

    migrate(scratch)
    assert _state(scratch) == (tables, ["fillfactor=50"])
