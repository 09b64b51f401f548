"""Rollups the PostGIS sink writes in the same transaction as the rows they summarise,
so history and its summaries never disagree.

- ``ping_minutes(minute, driver_id, pings)``: pings per driver per UTC minute;
- ``minute_stats(minute, pings, drivers)``: pings and distinct drivers per minute.

Distinct drivers stay exact under late, out-of-order and concurrent batches because the
upsert into ``ping_minutes`` reports which (minute, driver) rows it created
(``xmax = 0`` on a freshly inserted tuple): only those add a driver to the minute. Two
sink members writing the same minute serialise on the row lock, and the second one's
upsert takes the UPDATE path, so a driver is never counted twice. Rows are sorted so
concurrent batches lock in the same order (no deadlocks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg

from app.ping import Ping

_SQL = """
WITH batch AS (
    SELECT to_timestamp(m * 60) AS minute, d AS driver_id, n AS pings
    FROM unnest(%s::bigint[], %s::text[], %s::int[]) AS b(m, d, n)
), upserted AS (
    INSERT INTO ping_minutes AS pm (minute, driver_id, pings)
    SELECT minute, driver_id, pings FROM batch ORDER BY minute, driver_id
    ON CONFLICT (minute, driver_id) DO UPDATE SET pings = pm.pings + EXCLUDED.pings
    RETURNING pm.minute, (pm.xmax = 0) AS inserted
), new_drivers AS (
    SELECT minute, count(*) FILTER (WHERE inserted) AS drivers FROM upserted GROUP BY minute
)
INSERT INTO minute_stats AS ms (minute, pings, drivers)
SELECT b.minute, sum(b.pings), min(nd.drivers)
FROM batch b JOIN new_drivers nd USING (minute)
GROUP BY b.minute
ORDER BY b.minute
ON CONFLICT (minute) DO UPDATE
SET pings = ms.pings + EXCLUDED.pings, drivers = ms.drivers + EXCLUDED.drivers
"""


def write_rollups(cur: psycopg.Cursor, pings: Sequence[Ping]) -> None:
    """Add ``pings`` (already COPYed into ``pings`` by the same transaction) to the rollups."""
    if not pings:
        return
    per_driver_minute = Counter((p.ts // 60_000, p.driver_id) for p in pings)
    keys = sorted(per_driver_minute)
    cur.execute(
        _SQL,
        (
            [m for m, _ in keys],
            [d for _, d in keys],
            [per_driver_minute[k] for k in keys],
        ),
    )
