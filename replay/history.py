"""The heat value at a past time t, from PostGIS.

Same definition as live (app.live_counts): each driver counts once, in the cell of its
most recent ping with ts in (t - W, t]; ties on ts go to the larger geohash-8, compared
bytewise (COLLATE "C") as the Lua script compares strings. The counts at the requested
precision go to ``replay.heat.build_frame``, the builder live uses too.

Cost: one day partition is pruned to, then BRIN(ts) narrows it to the pages holding the
window (a few thousand rows for W = 30 s on a busy fleet), so a frame costs the same on
the first day of history as on the hundredth.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from replay.heat import EPOCH, View, build_frame

_COUNTS_SQL = """
SELECT left(geohash, %(precision)s) AS cell, count(*)::int
FROM (
    SELECT DISTINCT ON (driver_id) geohash
    FROM pings
    WHERE ts > %(low)s AND ts <= %(high)s
    ORDER BY driver_id, ts DESC, geohash COLLATE "C" DESC
) latest
GROUP BY 1
"""


def ms_to_dt(ms: int) -> datetime:
    """Exact (integer) conversion: a float epoch would blur the window's edges."""
    return EPOCH + timedelta(milliseconds=ms)


def counts_at(
    conn: psycopg.Connection, t_ms: int, precision: int, window_ms: int
) -> dict[str, int]:
    """Distinct drivers per cell at ``precision`` for time ``t_ms`` (non-zero cells only)."""
    rows = conn.execute(
        _COUNTS_SQL,
        {"precision": precision, "low": ms_to_dt(t_ms - window_ms), "high": ms_to_dt(t_ms)},
    ).fetchall()
    return {cell: int(n) for cell, n in rows}


def replay_frame(conn: psycopg.Connection, view: View, t_ms: int, window_ms: int) -> dict[str, Any]:
    return build_frame(counts_at(conn, t_ms, view.precision, window_ms), view, t_ms, "replay")
