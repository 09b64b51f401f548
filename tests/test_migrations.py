"""Alembic is the only way the schema changes: every revision upgrades from nothing to
head, downgrades back to nothing, and upgrades again, on a scratch database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.db import ROOT, migrate
from app.settings import Settings
from bench.stack import free_port


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


def _geom_indexes(s: Settings) -> dict[str, list[tuple[str, str]]]:
    """Table -> its (access method, index name) on ``geom``, for ``pings`` and its days."""
    with psycopg.connect(s.database_url) as conn:
        rows = conn.execute(
            "SELECT t.relname, am.amname, i.relname FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "JOIN pg_am am ON am.oid = i.relam "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey) "
            "WHERE a.attname = 'geom' AND t.relname LIKE 'pings%%' ORDER BY 1, 3"
        ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, method, name in rows:
        out.setdefault(table, []).append((method, name))
    return out


def test_0006_moves_the_spatial_index_onto_each_day(scratch: Settings, capsys) -> None:
    """Existing days keep a spatial index through the upgrade (GiST for closed days,
    SP-GiST for today, which still takes inserts) and the downgrade (the partitioned
    SP-GiST again)."""
    command.upgrade(_alembic(scratch), "0005")
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-20')")
        conn.execute("SELECT heatreplay_ensure_day_partition(current_date + 1)")
        tomorrow = conn.execute("SELECT to_char(current_date + 1, 'YYYYMMDD')").fetchone()
    assert tomorrow
    ahead = f"pings_{tomorrow[0]}"
    before = _geom_indexes(scratch)
    assert [m for m, _ in before["pings"]] == ["spgist"]
    assert [m for m, _ in before["pings_20261120"]] == ["spgist"]

    capsys.readouterr()
    command.upgrade(_alembic(scratch), "0006")
    assert capsys.readouterr().err.splitlines() == [  # progress, one line per day
        "0006: gist index on pings_20261120 (1/2)",
        f"0006: spgist index on {ahead} (2/2)",
    ]
    assert _geom_indexes(scratch) == {
        "pings_20261120": [("gist", "pings_20261120_geom_gist")],
        ahead: [("spgist", f"{ahead}_geom_spgist")],
    }
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-18', false)")
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-19')")
    after = _geom_indexes(scratch)
    assert "pings_20261118" not in after
    assert after["pings_20261119"] == [("spgist", "pings_20261119_geom_spgist")]

    command.downgrade(_alembic(scratch), "0005")
    restored = _geom_indexes(scratch)
    assert [m for m, _ in restored["pings"]] == ["spgist"]
    days = ("pings_20261118", "pings_20261119", "pings_20261120", ahead)
    for day in days:
        assert [m for m, _ in restored[day]] == ["spgist"], day
    with psycopg.connect(scratch.database_url) as conn:
        attached = conn.execute(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i "
            "WHERE i.inhparent = 'pings_geom_spgist'::regclass ORDER BY 1"
        ).fetchall()
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'pings_geom_spgist'::regclass"
        ).fetchone()
    assert attached == [(f"{day}_geom_spgist",) for day in sorted(days)]
    assert valid == (True,)  # every partition's index attached: the parent's is whole
    command.upgrade(_alembic(scratch), "0006")  # and up again, from the attached state
    assert _geom_indexes(scratch)["pings_20261120"] == [("gist", "pings_20261120_geom_gist")]


def _views_in(s: Settings, zone: str) -> dict[str, list[tuple[str, int]]]:
    """Each analysis view's (UTC bucket, pings) rows, read in a session at ``zone``."""
    queries = {
        "driver_tracks_hourly": "SELECT hour, pings FROM driver_tracks_hourly",
        "cell_hour_rank": "SELECT hour, pings FROM cell_hour_rank",
        "cell_minutes": "SELECT minute, pings FROM cell_minutes",
    }
    out = {}
    with psycopg.connect(s.database_url) as conn:
        conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
        for view, query in queries.items():
            rows = conn.execute(
                f"SELECT to_char(b AT TIME ZONE 'UTC', 'HH24:MI'), n FROM ({query}) v(b, n) "
                "ORDER BY 1"
            ).fetchall()
            out[view] = [(str(b), int(n)) for b, n in rows]
    return out


def test_0007_views_bucket_by_utc_hour_in_any_session_time_zone(scratch: Settings) -> None:
    migrate(scratch)
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-20')")
        for at in ("12:10:00", "12:10:30", "12:40:00"):  # one UTC hour, one driver, one cell
            conn.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                "(('2026-11-20 ' || %s)::timestamp AT TIME ZONE 'UTC', 'a', "
                "ST_SetSRID(ST_MakePoint(3.3, 6.5), 4326), 's14')",
                (at,),
            )
    utc = {
        "driver_tracks_hourly": [("12:00", 3)],
        "cell_hour_rank": [("12:00", 3)],
        "cell_minutes": [("12:10", 2), ("12:40", 1)],
    }
    for zone in ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns"):
        assert _views_in(scratch, zone) == utc, zone
    # 0003's views truncated in the session's zone: at +05:30 the hour split at 12:30 UTC
    command.downgrade(_alembic(scratch), "0006")
    assert _views_in(scratch, "Asia/Kolkata")["driver_tracks_hourly"] == [
        ("11:30", 2),
        ("12:30", 1),
    ]
    command.upgrade(_alembic(scratch), "head")
    assert _views_in(scratch, "Asia/Kolkata") == utc
    with psycopg.connect(scratch.database_url) as conn:  # replaced in place: grants, comments
        for view in utc:
            row = conn.execute(
                "SELECT has_table_privilege('heatreplay_analyst', %s, 'SELECT'), "
                "obj_description(%s::regclass, 'pg_class') LIKE %s",
                (view, view, "%UTC%"),
            ).fetchone()
            assert row == (True, True), view


def test_migrate_command_needs_postgres_only(scratch: Settings) -> None:
    """`heatreplay migrate` (the compose init job) creates and migrates the database with
    Redis unreachable: the schema has nothing to do with Redis."""
    env = {
        **os.environ,
        "HEATREPLAY_ENV": "test",
        "DATABASE_URL": scratch.database_url,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "database is at head"
    assert "Redis" not in r.stderr
    with psycopg.connect(scratch.database_url) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    head = ScriptDirectory.from_config(_alembic(scratch)).get_current_head()
    assert version == (head,)
