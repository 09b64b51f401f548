"""Rollups the PostGIS sink writes in the same transaction as the rows they summarise,
so history and its summaries never disagree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg

from app.ping import Ping


def write_rollups(cur: psycopg.Cursor, pings: Sequence[Ping]) -> None:
    minutes = Counter((p.ts // 60_000, p.driver_id) for p in pings)
    cur.executemany(
        "INSERT INTO ping_minutes (minute, driver_id, pings) "
        "VALUES (to_timestamp(%s * 60), %s, %s) "
        "ON CONFLICT (minute, driver_id) "
        "DO UPDATE SET pings = ping_minutes.pings + EXCLUDED.pings",
        [(m, d, n) for (m, d), n in minutes.items()],
    )
