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

_ROLLUP_SQL = """
WITH batch AS (
    SELECT to_timestamp(m * 60) AS minute, d AS driver_id, n AS pings
    FROM {batch} AS b(m, d, n)
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
# The batch as three comma-joined strings split by the server: adapting three Python lists
# of ~20k items element by element cost the sink 1.5 us per ping (15 % of its CPU,
# docs/performance.md, fifth round); the same SQL with arrays for ids it cannot carry.
_SQL = _ROLLUP_SQL.format(
    batch="unnest(string_to_array(%s, ',')::bigint[], string_to_array(%s, ','), "
    "string_to_array(%s, ',')::int[])"
)
_SQL_ARRAYS = _ROLLUP_SQL.format(batch="unnest(%s::bigint[], %s::text[], %s::int[])")


def write_rollups(cur: psycopg.Cursor, pings: Sequence[Ping]) -> None:
    """Add ``pings`` (already COPYed into ``pings`` by the same transaction) to the rollups."""
    if not pings:
        return
    per_driver_minute = Counter((p.ts // 60_000, p.driver_id) for p in pings)
    keys = sorted(per_driver_minute)
    minutes = [m for m, _ in keys]
    drivers = [d for _, d in keys]
    counts = [per_driver_minute[k] for k in keys]
    joined = ",".join(drivers)
    if all(drivers) and joined.count(",") == len(drivers) - 1:
        cur.execute(_SQL, (",".join(map(str, minutes)), joined, ",".join(map(str, counts))))
    else:  # an id with a comma, or an empty one, would not split back into itself
        cur.execute(_SQL_ARRAYS, (minutes, drivers, counts))
