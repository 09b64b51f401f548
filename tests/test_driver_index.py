"""A closed day partition gets a (driver_id, ts) index (app/driver_index.py), and a
driver's path is then read through it, on a migrated database of its own."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

import psycopg
import pytest
from click.testing import CliRunner

from app.analytics_queries import PATH_POINTS_SQL, driver_path, range_params
from app.cli import main
from app.db import migrate
from app.driver_index import driver_index_due, driver_indexed_partitions, due_driver_partitions
from app.geo_params import TimeRange
from app.index_builds import LOCK_KEY, day_end
from app.settings import Settings

DAYS = [date(2001, 1, 1), date(2001, 1, 2), date(2001, 1, 3)]
DRIVERS = 400
PER_DRIVER = 60  # pings per driver per day, one a minute from 10:00 UTC


def name(day: date) -> str:
    return f"pings_{day:%Y%m%d}"


@pytest.fixture
def history(scratch: Settings) -> Settings:
    """Three days of 400 drivers x 60 pings (24,000 a day), as either GEOM_INDEX mode
    writes them: no index led by driver_id."""
    migrate(scratch.with_(geom_index="immediate"))
    with psycopg.connect(scratch.database_url, autocommit=True) as conn:
        for day in DAYS:
            conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,))
            conn.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) "
                "SELECT (%(d)s::date + time '10:00') AT TIME ZONE 'UTC' "
                "       + make_interval(mins => m), format('drv-%%s', d), "
                "       ST_SetSRID(ST_MakePoint(3.3 + d / 10000.0, 6.5 + m / 10000.0), 4326), "
                "       's14mh9nb' "
                "FROM generate_series(0, %(n)s - 1) m, generate_series(1, %(drivers)s) d",
                {"d": day, "n": PER_DRIVER, "drivers": DRIVERS},
            )
        conn.execute("ANALYZE pings")
    return scratch.with_(geom_index_after_s=900.0)


def ours(conn: psycopg.Connection) -> set[str]:
    return {n for n in driver_indexed_partitions(conn) if n.startswith("pings_2001")}


def path_plan(conn: psycopg.Connection, day: date) -> str:
    """The plan of the API's own path query for drv-7 over ``day``'s 10:00-11:00."""
    start = calendar.timegm(day.timetuple()) * 1000 + 10 * 3_600_000
    params = range_params(TimeRange(start, start + 3_600_000), None) | {
        "driver": "drv-7",
        "limit": 100_001,
    }
    return "\n".join(r[0] for r in conn.execute("EXPLAIN " + PATH_POINTS_SQL, params))


def test_a_closed_day_gets_the_index_and_the_path_is_read_through_it(history):
    settings = history
    last = DAYS[-1]
    soon = day_end(last) + timedelta(minutes=10)  # the last day closed 10 min ago
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert due_driver_partitions(conn, settings, soon) == [
            (name(DAYS[1]), DAYS[1]),
            (name(DAYS[0]), DAYS[0]),
        ]
        before = path_plan(conn, DAYS[0])
        assert "driver_ts" not in before and "Seq Scan on pings_20010101" in before

    built = driver_index_due(settings, now=soon)
    assert [b.partition for b in built] == [name(DAYS[1]), name(DAYS[0])]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert ours(conn) == {name(DAYS[0]), name(DAYS[1])}
        plan = path_plan(conn, DAYS[0])
        # an Index Scan or a Bitmap Index Scan, by the planner's estimate
        assert "Index Scan using pings_20010101_driver_ts" in plan or (
            "Bitmap Index Scan on pings_20010101_driver_ts" in plan
        ), plan
        assert "Seq Scan" not in plan
        start = calendar.timegm(DAYS[0].timetuple()) * 1000 + 10 * 3_600_000
        points, _ = driver_path(conn, "drv-7", TimeRange(start, start + 3_600_000), 1_000)
        assert [p.ts_ms for p in points] == [start + m * 60_000 for m in range(PER_DRIVER)]
        assert {round(p.lon, 4) for p in points} == {3.3007}

        assert due_driver_partitions(conn, settings, soon) == []
        late = day_end(last) + timedelta(minutes=15)
        assert due_driver_partitions(conn, settings, late) == [(name(last), last)]
    assert [b.partition for b in driver_index_due(settings, now=late)] == [name(last)]
    assert driver_index_due(settings, now=late) == []  # nothing left, nothing rebuilt


def test_an_invalid_index_is_rebuilt_and_days_retention_drops_are_left_alone(history):
    settings = history.with_(retention_days=1)
    first, second = name(DAYS[0]), name(DAYS[1])
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE INDEX {second}_driver_ts ON {second} (driver_id, ts)")
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            (f"{second}_driver_ts",),
        )
        assert ours(conn) == set()
    # on day 3: day 1 is older than RETENTION_DAYS=1 allows, day 3 has not ended
    during_day_3 = day_end(DAYS[2]) - timedelta(hours=1)
    assert [b.partition for b in driver_index_due(settings, now=during_day_3)] == [second]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert ours(conn) == {second}
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text, indisvalid FROM pg_index "
            "WHERE indrelid = %s::regclass AND indexrelid::regclass::text LIKE '%%driver%%'",
            (second,),
        ).fetchall()
        assert indexes == [(f"{second}_driver_ts", True)]  # the invalid one is gone
        assert first not in driver_indexed_partitions(conn)


def test_one_builder_at_a_time_and_the_cli_runs_a_pass(history, monkeypatch):
    with psycopg.connect(history.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        assert driver_index_due(history) == []
        other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    monkeypatch.setenv("DATABASE_URL", history.database_url)
    monkeypatch.setenv("GEOM_INDEX", "immediate")
    result = CliRunner().invoke(main, ["geom-index"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # migrate made today and the days around it; of those only yesterday (once it has
    # been closed for GEOM_INDEX_AFTER_S) is due a driver index, before the 2001 days
    assert any(line.startswith(f"driver index: building {name(DAYS[2])} (") for line in lines), (
        lines
    )
    with psycopg.connect(history.database_url) as conn:
        assert ours(conn) == {name(d) for d in DAYS}
    assert lines[-1].startswith("driver index: ") and lines[-1].endswith(" partition(s) built")
