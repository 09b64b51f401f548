"""The busiest non-overlapping windows of a range, by ping count.

Candidate windows start on the UTC minute grid and lie inside [from, to]. Ranking is by
pings (from ``minute_stats``), ties broken by the earlier start; the answer is built
greedily: the busiest window, then the busiest that does not overlap any taken one, and
so on (windows that merely touch do not overlap). Windows without pings are not peaks.
Each chosen window's distinct drivers come from ``driver_minutes``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from replay.heat import iso_ms
from replay.history import ms_to_dt

MINUTE_MS = 60_000

_PINGS_SQL = """
SELECT (extract(epoch FROM minute)::bigint / 60) AS m, pings
FROM minute_stats WHERE minute >= %s AND minute < %s
"""
_DRIVERS_SQL = """
SELECT count(DISTINCT driver_id) FROM driver_minutes WHERE minute >= %s AND minute < %s
"""


def busiest_windows(
    per_minute: dict[int, int], first: int, last: int, width: int, top: int
) -> list[tuple[int, int]]:
    """(start minute, pings) of the ``top`` busiest non-overlapping windows of ``width``
    minutes starting in [first, last]."""
    if last < first:
        return []
    # prefix[i] = pings of minutes first .. first+i-1
    prefix = [0]
    for m in range(first, last + width):
        prefix.append(prefix[-1] + per_minute.get(m, 0))
    candidates = [(prefix[i + width] - prefix[i], first + i) for i in range(last - first + 1)]
    candidates.sort(key=lambda c: (-c[0], c[1]))
    chosen: list[tuple[int, int]] = []
    for pings, start in candidates:
        if pings <= 0 or len(chosen) >= top:
            break
        if all(start + width <= s or s + width <= start for s, _ in chosen):
            chosen.append((start, pings))
    return chosen


def peaks(
    conn: psycopg.Connection, from_ms: int, to_ms: int, window_s: int, top: int
) -> list[dict[str, Any]]:
    if window_s < 60 or window_s % 60:
        raise ValueError("window must be a whole number of minutes (in seconds)")
    width = window_s // 60
    first = -(-from_ms // MINUTE_MS)  # first whole minute at or after from
    last = to_ms // MINUTE_MS - width  # last start whose window ends by to
    if last < first:
        return []
    rows = conn.execute(
        _PINGS_SQL, (ms_to_dt(first * MINUTE_MS), ms_to_dt((last + width) * MINUTE_MS))
    ).fetchall()
    per_minute = {int(m): int(n) for m, n in rows}
    out: list[dict[str, Any]] = []
    for start, pings in busiest_windows(per_minute, first, last, width, top):
        low, high = start * MINUTE_MS, (start + width) * MINUTE_MS
        row = conn.execute(_DRIVERS_SQL, (ms_to_dt(low), ms_to_dt(high))).fetchone()
        out.append(
            {
                "start": iso_ms(low),
                "end": iso_ms(high),
                "pings": pings,
                "drivers": int(row[0]) if row else 0,
            }
        )
    return out
