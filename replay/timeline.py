"""The activity strip: pings and distinct drivers per step, from the minute rollups.

Buckets are aligned to multiples of ``step`` since the Unix epoch (UTC), so the same
bucket reads the same whatever range asked for it; every bucket that overlaps
[from, to) is a point, zeros included, so the strip is continuous. A point's counts
cover its whole bucket.

- pings: sum of ``minute_stats.pings`` (exact);
- drivers, step = 60 s: ``minute_stats.drivers`` (exact, maintained by the sink);
- drivers, longer steps: distinct drivers of ``driver_minutes`` per bucket (exact; reads
  one row per active driver per minute rather than one per ping).
"""

from __future__ import annotations

from typing import Any

import psycopg

from replay.heat import iso_ms
from replay.history import ms_to_dt

MINUTE_MS = 60_000

_MINUTES_SQL = """
SELECT (extract(epoch FROM minute)::bigint * 1000 / %(step)s) * %(step)s AS bucket,
       sum(pings)::bigint, sum(drivers)::bigint
FROM minute_stats WHERE minute >= %(low)s AND minute < %(high)s
GROUP BY 1
"""

_DRIVERS_SQL = """
SELECT (extract(epoch FROM minute)::bigint * 1000 / %(step)s) * %(step)s AS bucket,
       count(DISTINCT driver_id)
FROM driver_minutes WHERE minute >= %(low)s AND minute < %(high)s
GROUP BY 1
"""


def bucket_range(from_ms: int, to_ms: int, step_ms: int) -> range:
    first = from_ms // step_ms * step_ms
    return range(first, to_ms, step_ms)


def timeline(conn: psycopg.Connection, from_ms: int, to_ms: int, step_s: int) -> dict[str, Any]:
    """``{"step": s, "points": [[iso_t, pings, drivers], ...]}`` for [from, to)."""
    if step_s < 60 or step_s % 60:
        raise ValueError("step must be a whole number of minutes (in seconds)")
    step_ms = step_s * 1000
    buckets = bucket_range(from_ms, to_ms, step_ms)
    if not buckets:
        return {"step": step_s, "points": []}
    params = {
        "step": step_ms,
        "low": ms_to_dt(buckets[0]),
        "high": ms_to_dt(buckets[-1] + step_ms),
    }
    pings: dict[int, int] = {}
    drivers: dict[int, int] = {}
    for bucket, n, d in conn.execute(_MINUTES_SQL, params).fetchall():
        pings[int(bucket)] = int(n)
        drivers[int(bucket)] = int(d)
    if step_s != 60:
        drivers = {int(b): int(d) for b, d in conn.execute(_DRIVERS_SQL, params).fetchall()}
    return {
        "step": step_s,
        "points": [[iso_ms(b), pings.get(b, 0), drivers.get(b, 0)] for b in buckets],
    }
