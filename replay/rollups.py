"""Rollups the PostGIS sink writes in the same transaction as the rows they summarise,
so history and its summaries never disagree.

- ``driver_minutes(minute, driver_id)``: which drivers pinged in which UTC minute;
- ``minute_stats(minute, pings, drivers)``: pings and distinct drivers per minute.

Distinct drivers stay exact under late, out-of-order and concurrent batches because the
insert into ``driver_minutes`` skips pairs that exist (``ON CONFLICT DO NOTHING``) and
returns only the rows it created: only those add a driver to the minute. Two sink members
writing the same pair serialise on the key, and the second one skips it, so a driver is
never counted twice. Pairs are sorted so concurrent batches take keys in the same order.

A (minute, driver) row is written once, not touched by every ping: ``MinuteRollups``
remembers the pairs its own committed transactions wrote for the last few minutes and
sends only the others. That memory only saves work — a pair it does not hold is sent and
skipped by the key — so it is filled after the commit and never claims a row PostgreSQL
does not have. Until migration 0005 the table kept pings per driver per minute, updated by
every batch; that upsert cost PostgreSQL as much as storing the pings
(docs/performance.md, sixth round).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import psycopg

from app.ping import Ping

_ROLLUP_SQL = """
WITH seen AS (
    SELECT to_timestamp(m * 60) AS minute, d AS driver_id FROM {pairs} AS s(m, d)
), added AS (
    INSERT INTO driver_minutes (minute, driver_id)
    SELECT minute, driver_id FROM seen ORDER BY minute, driver_id
    ON CONFLICT (minute, driver_id) DO NOTHING
    RETURNING minute
), new_drivers AS (
    SELECT minute, count(*) AS drivers FROM added GROUP BY minute
)
INSERT INTO minute_stats AS ms (minute, pings, drivers)
SELECT to_timestamp(b.m * 60), b.n, coalesce(nd.drivers, 0)
FROM unnest(%s::bigint[], %s::bigint[]) AS b(m, n)
LEFT JOIN new_drivers nd ON nd.minute = to_timestamp(b.m * 60)
ORDER BY b.m
ON CONFLICT (minute) DO UPDATE
SET pings = ms.pings + EXCLUDED.pings, drivers = ms.drivers + EXCLUDED.drivers
"""
# The pairs as two comma-joined strings split by the server: adapting Python lists of
# ~20k items element by element cost the sink 1.5 us per ping (docs/performance.md,
# fifth round); the same SQL with arrays for ids a joined string cannot carry.
_SQL = _ROLLUP_SQL.format(
    pairs="unnest(string_to_array(%s, ',')::bigint[], string_to_array(%s, ','))"
)
_SQL_ARRAYS = _ROLLUP_SQL.format(pairs="unnest(%s::bigint[], %s::text[])")

Pairs = dict[int, set[str]]  # minute (epoch ms // 60,000) -> driver ids


def batch_pairs(pings: Sequence[Ping]) -> tuple[Counter[int], Pairs]:
    """Pings per minute and the drivers of each minute, for one batch."""
    minutes = [p.ts // 60_000 for p in pings]
    per_minute = Counter(minutes)
    if len(per_minute) == 1:  # the usual live batch: one minute
        return per_minute, {minutes[0]: {p.driver_id for p in pings}}
    pairs: Pairs = {m: set() for m in per_minute}
    for m, p in zip(minutes, pings, strict=True):
        pairs[m].add(p.driver_id)
    return per_minute, pairs


def send(cur: psycopg.Cursor, per_minute: Counter[int], pairs: Pairs) -> None:
    """Add one batch's pings per minute and (minute, driver) pairs to the rollups."""
    if not per_minute:
        return
    stat_minutes = sorted(per_minute)
    stat_counts = [per_minute[m] for m in stat_minutes]
    keys = sorted((m, d) for m, ds in pairs.items() for d in ds)
    minutes = [m for m, _ in keys]
    drivers = [d for _, d in keys]
    joined = ",".join(drivers)
    if all(drivers) and joined.count(",") == len(drivers) - 1:
        cur.execute(_SQL, (",".join(map(str, minutes)), joined, stat_minutes, stat_counts))
    else:  # an id with a comma, or an empty one, would not split back into itself
        cur.execute(_SQL_ARRAYS, (minutes, drivers, stat_minutes, stat_counts))


def write_rollups(cur: psycopg.Cursor, pings: Sequence[Ping]) -> None:
    """Add ``pings`` (already COPYed into ``pings`` by the same transaction) to the rollups,
    sending every pair (backfills and tests; the sink uses ``MinuteRollups``)."""
    send(cur, *batch_pairs(pings))


class MinuteRollups:
    """The sink's rollup writer: sends only (minute, driver) pairs its committed
    transactions have not written, for the newest ``keep_minutes`` minutes it saw.

    Minutes ahead of the clock (pings may be up to 5 minutes early: a driver's clock
    runs fast) are not remembered: a few such drivers would otherwise push the current
    minute out of the memory. Their pairs are sent again and skipped by the key."""

    def __init__(
        self, keep_minutes: int = 3, clock_ms: Callable[[], float] = lambda: time.time() * 1000
    ) -> None:
        self.keep_minutes = keep_minutes
        self._clock_ms = clock_ms
        self._written: Pairs = {}

    def write(self, cur: psycopg.Cursor, pings: Sequence[Ping]) -> Pairs:
        """Write the batch's rollups in the caller's transaction; pass what this returns
        (the pairs sent) to ``committed`` once that transaction has committed."""
        return self.write_counted(cur, *batch_pairs(pings))

    def write_counted(self, cur: psycopg.Cursor, per_minute: Counter[int], pairs: Pairs) -> Pairs:
        """``write`` for a batch already counted by ``batch_pairs`` (the sink counts a
        batch before its writer thread takes it). ``pairs`` is left as it was: a retry
        of the transaction sends from it again."""
        sent: Pairs = {}
        for m, drivers in pairs.items():
            known = self._written.get(m)
            sent[m] = drivers - known if known else drivers
        send(cur, per_minute, sent)
        return sent

    def committed(self, pairs: Pairs) -> None:
        now_minute = int(self._clock_ms()) // 60_000
        for m, drivers in pairs.items():
            if m <= now_minute:
                self._written.setdefault(m, set()).update(drivers)
        if len(self._written) > self.keep_minutes:
            for m in sorted(self._written)[: -self.keep_minutes]:
                del self._written[m]

    def forget(self) -> None:
        """Drop the memory: the next batches send their pairs again and the key skips
        the ones that exist."""
        self._written.clear()

    def remembered(self) -> int:
        return sum(len(ds) for ds in self._written.values())
