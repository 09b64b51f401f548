"""Retention drops whole day partitions of raw pings older than N days and keeps the
rollups, on the real PostGIS schema."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import main
from app.kafka_io import PingProducer
from app.ping import Ping
from app.postgis_sink import PostgisSink
from app.retention import apply_retention, day_partitions
from tests.conftest import wait_until
from tests.faults import produce

DAYS = [date(2001, 1, 1) + timedelta(days=i) for i in range(8)]  # 2001-01-01 .. 01-08


def names(days: list[date]) -> list[str]:
    return [f"pings_{d:%Y%m%d}" for d in days]


@pytest.fixture
def old_history(base_settings, database_url):
    """One ping at noon of each day in DAYS, and its rollup row."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for day in DAYS:
            conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,))
            conn.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                "(%s::date + time '12:00' AT TIME ZONE 'UTC', 'old', "
                "ST_SetSRID(ST_MakePoint(3.3792, 6.5244), 4326), 's14mh9nb')",
                (day,),
            )
            conn.execute(
                "INSERT INTO driver_minutes (minute, driver_id) VALUES "
                "(%s::date + time '12:00' AT TIME ZONE 'UTC', 'old')",
                (day,),
            )
    yield base_settings.with_(database_url=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in names(DAYS):
            conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute("DELETE FROM driver_minutes WHERE driver_id = 'old'")


def ours(conn: psycopg.Connection) -> list[str]:
    return sorted(n for n in day_partitions(conn) if n.startswith("pings_2001"))


def test_drops_old_day_partitions_and_keeps_rollups(old_history, database_url):
    settings = old_history

    kept_all = apply_retention(settings.with_(retention_days=0), today=date(2001, 1, 8))
    assert kept_all.cutoff is None and kept_all.dropped == []

    dry = apply_retention(settings, days=3, today=date(2001, 1, 8), dry_run=True)
    assert dry.cutoff == date(2001, 1, 5)
    assert [n for n in dry.dropped if n.startswith("pings_2001")] == names(DAYS[:4])
    with psycopg.connect(database_url) as conn:
        assert ours(conn) == names(DAYS)  # a dry run drops nothing

    # RETENTION_DAYS is the default when no --days is given
    done = apply_retention(settings.with_(retention_days=3), today=date(2001, 1, 8))
    assert [n for n in done.dropped if n.startswith("pings_2001")] == names(DAYS[:4])
    with psycopg.connect(database_url) as conn:
        assert ours(conn) == names(DAYS[4:])
        rows = conn.execute(
            "SELECT (ts AT TIME ZONE 'UTC')::date FROM pings "
            "WHERE driver_id = 'old' AND ts < '2002-01-01Z' ORDER BY ts"
        ).fetchall()
        assert [r[0] for r in rows] == DAYS[4:]
        minutes = conn.execute(
            "SELECT (minute AT TIME ZONE 'UTC')::date FROM driver_minutes "
            "WHERE driver_id = 'old' AND minute < '2002-01-01Z' ORDER BY minute"
        ).fetchall()
        assert [r[0] for r in minutes] == DAYS  # every rollup row is still there

    again = apply_retention(settings, days=3, today=date(2001, 1, 8))
    assert [n for n in again.dropped if n.startswith("pings_2001")] == []


def test_a_busy_day_is_kept_for_next_time_and_the_others_dropped(old_history, database_url):
    """A day held by something else (an index build, a long query) used to end the run
    with its lock timeout, so the days after it were not dropped either."""
    busy = names(DAYS)[1]
    with psycopg.connect(database_url) as holder:
        holder.execute(f"LOCK TABLE {busy} IN SHARE MODE")  # held until the block ends
        done = apply_retention(old_history, days=3, today=date(2001, 1, 8), lock_timeout_s=0.2)
        assert [n for n in done.dropped if n.startswith("pings_2001")] == [
            n for n in names(DAYS[:4]) if n != busy
        ]
        assert busy in done.kept
    again = apply_retention(old_history, days=3, today=date(2001, 1, 8))
    assert [n for n in again.dropped if n.startswith("pings_2001")] == [busy]


def test_cli_dry_run_lists_what_it_would_drop(old_history, database_url):
    result = CliRunner().invoke(
        main,
        ["retention", "--dry-run", "--days", "3"],
        env={"DATABASE_URL": database_url, "HEATREPLAY_ENV": "test"},
    )
    assert result.exit_code == 0, result.output
    listed = result.output.split(":", 2)[-1].split()
    # today's date is real here, so every 2001 partition is older than 3 days
    assert [n for n in listed if n.startswith("pings_2001")] == names(DAYS)
    with psycopg.connect(database_url) as conn:
        assert ours(conn) == names(DAYS)

    refused = CliRunner().invoke(main, ["retention", "--days", "-1"])
    assert refused.exit_code == 2 and "-1" in refused.output


def test_the_sink_remakes_a_day_partition_dropped_under_it(settings, db, run_in_background):
    """The sink remembers which day partitions exist. Once retention dropped a day it had
    written to, a late ping for that day failed the COPY ("no partition found for row")
    and the sink exited, on every restart until its memory was cleared."""
    noon_ms = calendar.timegm(date(2001, 2, 3).timetuple()) * 1000 + 12 * 3_600_000
    sink = PostgisSink(settings)
    run_in_background(sink)
    producer = PingProducer(settings)
    produce(producer, [Ping("late-1", 6.5, 3.4, noon_ms)])
    wait_until(lambda: sink.stats.rows >= 1, timeout=60)
    done = apply_retention(settings, days=3, today=date(2001, 2, 10))
    assert "pings_20010203" in done.dropped
    produce(producer, [Ping("late-2", 6.5, 3.4, noon_ms + 1)])
    producer.close()
    wait_until(lambda: sink.stats.rows >= 2, timeout=60)
    assert db.execute("SELECT driver_id FROM pings_20010203").fetchall() == [("late-2",)]
