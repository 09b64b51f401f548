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


def _state(s: Settings, rollup: str = "driver_minutes") -> tuple[set[str], list[str] | None]:
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
            "SELECT reloptions FROM pg_class WHERE relname = %s", (rollup,)
        ).fetchone()
    return tables, (row[0] if row else None)


def test_upgrade_downgrade_upgrade(scratch: Settings) -> None:
    migrate(scratch)
    tables, options = _state(scratch)
    assert {"pings", "driver_minutes", "minute_stats", "sink_offsets", "alembic_version"} <= tables
    assert "ping_minutes" not in tables
    assert {"cell_minutes", "driver_tracks_hourly", "cell_hour_rank"} <= tables
    assert options is None  # 0005: pairs are inserted once, never updated

    command.downgrade(_alembic(scratch), "0004")
    assert _state(scratch, "ping_minutes")[1] == ["fillfactor=50"]

    command.downgrade(_alembic(scratch), "0003")
    assert _state(scratch, "ping_minutes")[1] is None

    command.downgrade(_alembic(scratch), "base")
    assert _state(scratch)[0] == {"alembic_version"}

    migrate(scratch)
    assert _state(scratch) == (tables, None)


def test_0005_downgrade_recounts_pings_per_driver_minute(scratch: Settings) -> None:
    migrate(scratch)
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-20')")
        rows = [("a", "17:00:01"), ("a", "17:00:59"), ("b", "17:00:30"), ("a", "17:01:00")]
        for driver, at in rows:
            conn.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                "(('2026-11-20 ' || %s)::timestamp AT TIME ZONE 'UTC', %s, "
                "ST_SetSRID(ST_MakePoint(3.3, 6.5), 4326), 's14')",
                (at, driver),
            )
        conn.execute(
            "INSERT INTO driver_minutes SELECT DISTINCT date_trunc('minute', ts, 'UTC'), "
            "driver_id FROM pings"
        )
    command.downgrade(_alembic(scratch), "0004")
    with psycopg.connect(scratch.database_url) as conn:
        got = conn.execute(
            "SELECT to_char(minute AT TIME ZONE 'UTC', 'HH24:MI'), driver_id, pings "
            "FROM ping_minutes ORDER BY 1, 2"
        ).fetchall()
    assert got == [("17:00", "a", 2), ("17:00", "b", 1), ("17:01", "a", 1)]
