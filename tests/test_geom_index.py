"""GEOM_INDEX: day partitions get their spatial index when due (app/geom_index.py),
on a migrated database of their own (the builder looks at every partition)."""

from __future__ import annotations

import calendar
import threading
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import main
from app.db import migrate
from app.driver_index import driver_indexed_partitions
from app.geom_index import GeomIndexer, due_partitions, index_due, indexed_partitions
from app.index_builds import LOCK_KEY
from app.kafka_io import PingProducer
from app.ping import Ping
from app.postgis_sink import run_sink
from app.settings import Settings, SettingsError, load_settings
from tests.conftest import wait_until
from tests.faults import produce

DAYS = [date(2001, 1, 1), date(2001, 1, 2), date(2001, 1, 3)]
INSIDE = [(3.30, 6.50), (3.31, 6.51), (3.32, 6.52)]  # in the box queried below
OUTSIDE = [(3.60, 6.60), (3.10, 6.40)]
BOX = "ST_MakeEnvelope(3.25, 6.45, 3.35, 6.55, 4326)"


def name(day: date) -> str:
    return f"pings_{day:%Y%m%d}"


def midnight_after(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


@pytest.fixture
def history(scratch: Settings) -> Settings:
    """Three unindexed days (as GEOM_INDEX=deferred creates them), five pings each."""
    migrate(scratch.with_(geom_index="immediate"))  # whatever the environment says
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        for day in DAYS:
            conn.execute("SELECT heatreplay_ensure_day_partition(%s, false)", (day,))
            for n, (lon, lat) in enumerate(INSIDE + OUTSIDE):
                conn.execute(
                    "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                    "((%s::date + make_interval(hours => %s)) AT TIME ZONE 'UTC', 'd', "
                    "ST_SetSRID(ST_MakePoint(%s, %s), 4326), 's14mh9nb')",
                    (day, n, lon, lat),
                )
    return scratch.with_(geom_index="deferred", geom_index_after_s=900.0)


def ours(conn: psycopg.Connection) -> set[str]:
    """The indexed days of this test (``migrate`` also makes today and the days around it,
    with their index)."""
    return {n for n in indexed_partitions(conn) if n.startswith("pings_2001")}


def spatial_plan(conn: psycopg.Connection, day: date) -> tuple[int, str]:
    """The count of ``day``'s pings in BOX, and the plan PostgreSQL chose for it when it
    may not scan sequentially (so an index is used if one can be)."""
    query = (
        f"SELECT count(*) FROM pings WHERE ts >= %(d)s::date AT TIME ZONE 'UTC' "
        f"AND ts < (%(d)s::date + 1) AT TIME ZONE 'UTC' AND geom && {BOX}"
    )
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {"d": day}))
        count = conn.execute(query, {"d": day}).fetchone()
    assert count
    return count[0], plan


def test_the_partition_function_creates_a_day_with_or_without_its_index(scratch):
    migrate(scratch.with_(geom_index="immediate"))
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2001-01-01')")
        conn.execute("SELECT heatreplay_ensure_day_partition('2001-01-02', true)")
        conn.execute("SELECT heatreplay_ensure_day_partition('2001-01-03', false)")
        assert ours(conn) == {"pings_20010101", "pings_20010102"}


def test_deferred_builds_a_day_only_once_it_has_been_closed_long_enough(history):
    settings = history
    last = DAYS[-1]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        # 10 minutes after the last day ended: the day before it is past the 15 minutes
        soon = midnight_after(last) + timedelta(minutes=10)
        older = [(name(DAYS[1]), DAYS[1]), (name(DAYS[0]), DAYS[0])]
        assert due_partitions(conn, settings, soon) == older
        assert due_partitions(conn, settings, midnight_after(last) - timedelta(seconds=1)) == older
        assert spatial_plan(conn, DAYS[0])[0] == len(INSIDE)  # answered without an index

    built = index_due(settings, now=soon)
    assert [b.partition for b in built] == [name(DAYS[1]), name(DAYS[0])]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert ours(conn) == {name(DAYS[0]), name(DAYS[1])}
        count, plan = spatial_plan(conn, DAYS[0])
        assert count == len(INSIDE) and f"{name(DAYS[0])}_geom_gist" in plan
        assert due_partitions(conn, settings, soon) == []
        late = midnight_after(last) + timedelta(minutes=15)
        assert due_partitions(conn, settings, late) == [(name(last), last)]

    assert [b.partition for b in index_due(settings, now=late)] == [name(last)]
    assert index_due(settings, now=late) == []  # nothing left, nothing rebuilt


def methods(conn: psycopg.Connection, partition: str) -> list[tuple[str, str, bool]]:
    """Every index of ``partition``: (access method, name, valid)."""
    rows = conn.execute(
        "SELECT am.amname, i.relname, x.indisvalid FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
        "WHERE x.indrelid = %s::regclass ORDER BY 1",
        (partition,),
    ).fetchall()
    return [(m, n.removeprefix(partition), v) for m, n, v in rows]


def test_immediate_builds_every_day_without_one_and_replaces_an_invalid_index(history):
    """GiST for a day that has ended, SP-GiST (cheaper row by row) for one still taking
    inserts; an index left INVALID by a build cut off is dropped, not left beside."""
    settings = history.with_(geom_index="immediate")
    first = name(DAYS[0])
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE INDEX {first}_geom_spgist ON {first} USING spgist (geom)")
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            (f"{first}_geom_spgist",),
        )
        assert ours(conn) == set()
        assert len(due_partitions(conn, settings, datetime(2000, 1, 1, tzinfo=UTC))) == 3

    during_day_2 = midnight_after(DAYS[1]) - timedelta(hours=1)
    assert sorted(b.partition for b in index_due(settings, now=during_day_2)) == [
        name(d) for d in DAYS
    ]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert ours(conn) == {name(d) for d in DAYS}
        assert methods(conn, first) == [("brin", "_ts_idx", True), ("gist", "_geom_gist", True)]
        for day in DAYS[1:]:
            assert methods(conn, name(day))[1] == ("spgist", "_geom_spgist", True)
        for day in DAYS:
            assert spatial_plan(conn, day)[0] == len(INSIDE)


def test_days_retention_is_about_to_drop_are_left_alone(history):
    settings = history.with_(retention_days=1)
    an_hour_into_day_4 = midnight_after(DAYS[2]) + timedelta(hours=1)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert due_partitions(conn, settings, an_hour_into_day_4) == [(name(DAYS[2]), DAYS[2])]


def test_one_builder_at_a_time(history):
    settings = history
    with psycopg.connect(settings.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        assert index_due(settings) == []
        with psycopg.connect(settings.database_url) as conn:
            assert ours(conn) == set()
        # released here, not by closing: the server ends a closed session's backend, and
        # with it the lock, a moment after the client has moved on
        other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    assert len(index_due(settings)) == 3


def test_the_cli_runs_one_pass_with_progress(history, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", history.database_url)
    monkeypatch.setenv("GEOM_INDEX", "deferred")
    result = CliRunner().invoke(main, ["geom-index"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"geom index: building {name(DAYS[2])} (1/3, gist)"
    assert "geom index: 3 partition(s) built (GEOM_INDEX=deferred)" in lines
    # then the closed days' driver indexes (app/driver_index.py, tests/test_driver_index.py)
    assert lines[-1].startswith("driver index: ")


def test_the_indexer_thread_retries_after_an_outage(history):
    """A pass that cannot reach PostgreSQL is logged; the next one builds."""
    down = history.with_(database_url=history.database_url + " port=1", geom_index_check_s=0.05)
    stop = threading.Event()
    indexer = GeomIndexer(down, stop)
    indexer.start()
    wait_until(lambda: indexer.passes >= 2, timeout=30)
    indexer.settings = history.with_(geom_index_check_s=0.05)  # PostgreSQL is back
    # autocommit: a transaction left open after a query with parameters keeps its
    # snapshot, and CREATE INDEX CONCURRENTLY waits for it to end
    with psycopg.connect(history.database_url, autocommit=True) as conn:
        wait_until(lambda: len(ours(conn)) == 3, timeout=30)
    stop.set()
    indexer.join(timeout=10)
    assert not indexer.is_alive()


def test_the_indexer_thread_keeps_the_day_partitions_ahead(history):
    """Every pass makes the days up to PARTITION_DAYS_AHEAD, so the sink never has to
    create one at midnight (the lock that takes could wait behind a long reader)."""
    today = datetime.now(UTC).date()
    ahead = [name(today + timedelta(days=n)) for n in (1, 2, 3)]
    with psycopg.connect(history.database_url, autocommit=True) as conn:
        for table in ahead:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    stop = threading.Event()
    indexer = GeomIndexer(history.with_(partition_days_ahead=3, geom_index_check_s=0.05), stop)
    indexer.start()
    wait_until(lambda: indexer.passes >= 1, timeout=30)
    stop.set()
    indexer.join(timeout=10)
    with psycopg.connect(history.database_url) as conn:
        found = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relname = ANY(%s)", (ahead,)
            ).fetchall()
        }
    assert found == set(ahead)


class SinkProcess:
    """``heatreplay sink``'s entry point (the sink and the index builder beside it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()

    def run(self) -> None:
        run_sink(self.settings, self.stop)


def test_a_deferred_sink_writes_days_unindexed_and_indexes_them_once_closed(
    settings, scratch, run_in_background
):
    deferred = settings.with_(
        database_url=scratch.database_url,
        geom_index="deferred",
        geom_index_after_s=3600.0,  # today's day is not due even if midnight passes
        geom_index_check_s=0.2,
    )
    migrate(deferred)  # today and the days ahead: created without the index
    old = calendar.timegm(date(2001, 3, 4).timetuple()) * 1000 + 12 * 3_600_000
    now = int(time.time() * 1000)
    producer = PingProducer(deferred)
    produce(producer, [Ping(f"old-{n}", 6.5, 3.3 + n / 100, old + n) for n in range(3)])
    produce(producer, [Ping(f"new-{n}", 6.5, 3.3 + n / 100, now - n) for n in range(2)])
    producer.close()
    run_in_background(SinkProcess(deferred))
    with psycopg.connect(deferred.database_url, autocommit=True) as conn:
        wait_until(
            lambda: conn.execute("SELECT count(*) FROM pings").fetchone() == (5,), timeout=60
        )
        wait_until(lambda: "pings_20010304" in indexed_partitions(conn), timeout=30)
        # and, the pass after, the closed day's (driver_id, ts) index
        wait_until(lambda: "pings_20010304" in driver_indexed_partitions(conn), timeout=30)
        count, plan = spatial_plan(conn, date(2001, 3, 4))
        assert count == 3 and "pings_20010304_geom_gist" in plan
        time.sleep(1.0)  # five more passes of the builder
        today = f"pings_{datetime.fromtimestamp(now / 1000, UTC):%Y%m%d}"
        assert today not in indexed_partitions(conn)
        assert today not in driver_indexed_partitions(conn)
        assert conn.execute(f"SELECT count(*) FROM {today}").fetchone() == (2,)


def test_geom_index_setting_is_checked(monkeypatch):
    monkeypatch.setenv("GEOM_INDEX", "sometimes")
    with pytest.raises(SettingsError, match="GEOM_INDEX must be one of immediate, deferred"):
        load_settings()
