"""The minute rollups are exact for any driver id the sink may meet: ids are sent to
PostgreSQL as one comma-joined string, and ids that string could not carry (a comma, an
empty id: possible on the wire, which the sink decodes without the API's rules) take
the array form of the same SQL."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from app.ping import Ping
from tests.replay_support import ensure_days, ms, truncate, write_history

T0 = ms(datetime(2026, 11, 20, 17, 0, 30, tzinfo=UTC))


def _rollups(conn: psycopg.Connection) -> tuple[dict[tuple[int, str], int], dict[int, tuple]]:
    per_driver = {
        (int(m), d): int(n)
        for m, d, n in conn.execute(
            "SELECT extract(epoch FROM minute)::bigint / 60, driver_id, pings FROM ping_minutes"
        ).fetchall()
    }
    per_minute = {
        int(m): (int(n), int(d))
        for m, n, d in conn.execute(
            "SELECT extract(epoch FROM minute)::bigint / 60, pings, drivers FROM minute_stats"
        ).fetchall()
    }
    return per_driver, per_minute


@pytest.mark.parametrize(
    "ids",
    [
        ["a", "b", "c"],  # the string form
        ["a", "b,c", "d"],  # a comma: arrays
        ["a", "", "d"],  # an empty id: arrays
        ["only"],
        [""],  # alone, the string form would be an empty array
    ],
)
def test_rollups_exact_for_any_driver_id(db, ids):
    truncate(db)
    ensure_days(db, T0, T0 + 120_000)
    pings = [Ping(d, 6.5, 3.37, T0 + k * 20_000 + i) for k in range(5) for i, d in enumerate(ids)]
    # three batches, one straddling a minute boundary; a driver appears in several
    write_history(db, [pings[:4], pings[4:9], pings[9:]])
    per_driver, per_minute = _rollups(db)
    expected = Counter((p.ts // 60_000, p.driver_id) for p in pings)
    assert per_driver == dict(expected)
    minutes = Counter(p.ts // 60_000 for p in pings)
    assert per_minute == {
        m: (minutes[m], len({d for (mm, d) in expected if mm == m})) for m in minutes
    }
