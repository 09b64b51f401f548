"""Retention drops whole day partitions of raw pings older than N days and keeps the
rollups, on the real PostGIS schema."""

from __future__ import annotations

import calendar
import threading
from datetime import date, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from app.cli import main
from app.kafka_io import PingProducer
from app.ping import Ping
from app.postgis_sink import PostgisSink
from app.retention import MARK, RetentionResult, apply_retention, day_partitions
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
    """The fixture's day partitions still there (the sink tests below leave 2001-02-03)."""
    return sorted(n for n in day_partitions(conn) if n in names(DAYS))


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


def _sink_that_wrote_a_ping_on_20010203(
    settings, run_in_background
) -> tuple[PostgisSink, PingProducer, int]:
    """A running sink that has written ping ``late-1`` at noon of 2001-02-03 (creating
    that day), its producer, and that noon in epoch ms."""
    noon_ms = calendar.timegm(date(2001, 2, 3).timetuple()) * 1000 + 12 * 3_600_000
    sink = PostgisSink(settings)
    run_in_background(sink)
    producer = PingProducer(settings)
    produce(producer, [Ping("late-1", 6.5, 3.4, noon_ms)])
    wait_until(lambda: sink.stats.rows >= 1, timeout=60)
    return sink, producer, noon_ms


def test_the_sink_remakes_a_day_partition_dropped_under_it(settings, db, run_in_background):
    """The sink remembers which day partitions exist. Once retention dropped a day it had
    written to, a late ping for that day failed the COPY ("no partition found for row")
    and the sink exited, on every restart until its memory was cleared."""
    sink, producer, noon_ms = _sink_that_wrote_a_ping_on_20010203(settings, run_in_background)
    done = apply_retention(settings, days=3, today=date(2001, 2, 10))
    assert "pings_20010203" in done.dropped
    produce(producer, [Ping("late-2", 6.5, 3.4, noon_ms + 1)])
    producer.close()
    wait_until(lambda: sink.stats.rows >= 2, timeout=60)
    assert db.execute("SELECT driver_id FROM pings_20010203").fetchall() == [("late-2",)]


def _retention_waiting(conn: psycopg.Connection) -> bool:
    """Retention's session is waiting for a lock (its detach, or the DROP of before)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query ~ '^(ALTER TABLE pings DETACH PARTITION|DROP TABLE)'"
    ).fetchone()
    return bool(row and row[0])


def _state(conn: psycopg.Connection, table: str) -> str | None:
    row = conn.execute(
        "SELECT CASE WHEN inhdetachpending THEN 'pending' ELSE 'attached' END "
        "FROM pg_inherits WHERE inhrelid = to_regclass(%s) AND inhparent = 'pings'::regclass",
        (table,),
    ).fetchone()
    return row[0] if row else None


def test_a_long_reader_holds_up_no_insert_or_query_while_a_day_is_removed(
    old_history, database_url
):
    """Retention used DROP TABLE, whose ACCESS EXCLUSIVE lock on pings, queued behind a
    long reader, stopped every insert and query on pings until it gave up. The
    concurrent detach waits for the reader while others read and write."""
    result: list[object] = []
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM pings").fetchone()  # holds pings until commit
        worker = threading.Thread(
            target=lambda: result.append(
                apply_retention(old_history, days=3, today=date(2001, 1, 8), lock_timeout_s=30)
            )
        )
        worker.start()
        with psycopg.connect(database_url, autocommit=True) as other:
            wait_until(lambda: _retention_waiting(other), timeout=10)
            other.execute("SET lock_timeout = '2s'")  # queued behind DROP, this failed
            other.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                "('2001-01-07 13:00Z', 'old', ST_SetSRID(ST_MakePoint(3.3, 6.5), 4326), 's14')"
            )
            seen = other.execute(
                "SELECT count(*) FROM pings WHERE driver_id = 'old' AND ts < '2002-01-01Z'"
            ).fetchone()
            # the day in its detach is no longer seen; the other 7 and the insert are
            assert seen == (8,)
            assert worker.is_alive()  # still waiting for the reader
        reader.commit()
    worker.join(timeout=30)
    done = result[0]
    assert isinstance(done, RetentionResult)
    assert [n for n in done.dropped if n.startswith("pings_2001")] == names(DAYS[:4])
    with psycopg.connect(database_url) as conn:
        assert ours(conn) == names(DAYS[4:])
        assert conn.execute(
            "SELECT count(*) FROM pings WHERE driver_id = 'old' AND ts < '2002-01-01Z'"
        ).fetchone() == (5,)


def test_a_detach_cut_off_is_completed_by_the_next_run(old_history, database_url):
    """A reader outlasting the lock timeout leaves the first day *detach pending*: no
    query sees it, the other days wait (one pending detach per table), and the next run
    completes and drops it with the rest."""
    first = names(DAYS)[0]
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM pings").fetchone()
        cut = apply_retention(old_history, days=3, today=date(2001, 1, 8), lock_timeout_s=0.3)
        assert [n for n in cut.dropped if n.startswith("pings_2001")] == []
        with psycopg.connect(database_url, autocommit=True) as other:
            assert _state(other, first) == "pending"
            assert other.execute(
                "SELECT count(*) FROM pings WHERE driver_id = 'old' AND ts < '2002-01-01Z'"
            ).fetchone() == (7,)
    again = apply_retention(old_history, days=3, today=date(2001, 1, 8))
    assert [n for n in again.dropped if n.startswith("pings_2001")] == names(DAYS[:4])
    with psycopg.connect(database_url) as conn:
        assert ours(conn) == names(DAYS[4:])
        assert conn.execute("SELECT to_regclass(%s)", (first,)).fetchone() == (None,)


def test_a_day_left_pending_comes_back_when_it_is_to_be_kept(old_history, database_url):
    """RETENTION_DAYS raised after a cut-off detach: the day is attached again, rows and
    all, instead of staying out of every query."""
    first = names(DAYS)[0]
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT count(*) FROM pings").fetchone()
        apply_retention(old_history, days=3, today=date(2001, 1, 8), lock_timeout_s=0.3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _state(conn, first) == "pending"
    kept = apply_retention(old_history, days=30, today=date(2001, 1, 8))
    assert kept.dropped == [] and first in kept.kept
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert _state(conn, first) == "attached"
        assert conn.execute(
            "SELECT count(*) FROM pings WHERE driver_id = 'old' AND ts < '2002-01-01Z'"
        ).fetchone() == (8,)


def test_a_late_ping_for_a_day_left_pending_brings_it_back(settings, db, run_in_background):
    """A day whose detach was cut off has no partition for its rows, and its table still
    exists: the sink's COPY failed, the partition function said "made already", and the
    sink gave up. Now the function completes the detach and attaches the day again."""
    sink, producer, noon_ms = _sink_that_wrote_a_ping_on_20010203(settings, run_in_background)
    # older days other tests left go first, so the detach cut off below is this day's
    apply_retention(settings, days=1, today=date(2001, 2, 3))
    with psycopg.connect(settings.database_url) as reader:
        reader.execute("SELECT count(*) FROM pings").fetchone()
        apply_retention(settings, days=3, today=date(2001, 2, 10), lock_timeout_s=0.3)
    assert _state(db, "pings_20010203") == "pending"
    produce(producer, [Ping("late-2", 6.5, 3.4, noon_ms + 1)])
    producer.close()
    wait_until(lambda: sink.stats.rows >= 2, timeout=60)
    assert _state(db, "pings_20010203") == "attached"
    rows = db.execute("SELECT driver_id FROM pings_20010203 ORDER BY ts").fetchall()
    assert rows == [("late-1",), ("late-2",)]


def test_a_day_a_stopped_run_left_detached_is_dropped_and_other_tables_left_alone(
    old_history, database_url
):
    """A run stopped between its detach and its drop leaves a table that is no longer a
    partition: its mark tells the next run to drop it. A table merely named like a day
    (an operator's detached copy) is not retention's to drop or to attach."""
    first, second = names(DAYS)[:2]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(first), sql.Literal(MARK))
        )
        conn.execute(f"ALTER TABLE pings DETACH PARTITION {first}")
        conn.execute(f"ALTER TABLE pings DETACH PARTITION {second}")  # not marked
    done = apply_retention(old_history, days=3, today=date(2001, 1, 8))
    assert [n for n in done.dropped if n.startswith("pings_2001")] == [first, *names(DAYS[2:4])]
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (first,)).fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM " + second).fetchone() == (1,)
        assert _state(conn, second) is None  # still not a partition
        assert ours(conn) == names(DAYS[4:])
