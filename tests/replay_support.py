"""Helpers for the replay tests: write pings to history exactly as the sink does (binary
COPY + rollups in one transaction) and compute the heat by brute force."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import geohash
import psycopg

from app.copy_rows import COPY_SQL, encode_copy
from app.ping import Ping
from replay.rollups import write_rollups

ROLLUP_TABLES = "pings, driver_minutes, minute_stats"


def ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def ensure_days(conn: psycopg.Connection, first_ms: int, last_ms: int) -> None:
    day = datetime.fromtimestamp(first_ms / 1000, UTC).date()
    while ms(datetime(day.year, day.month, day.day, tzinfo=UTC)) <= last_ms:
        conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,))
        day += timedelta(days=1)
    conn.commit()


def write_history(conn: psycopg.Connection, batches: Iterable[Sequence[Ping]]) -> None:
    """Each batch in its own transaction, as the sink writes them."""
    for batch in batches:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY_SQL) as copy:
                copy.write(encode_copy(batch))
            write_rollups(cur, batch)


def truncate(conn: psycopg.Connection) -> None:
    conn.execute(f"TRUNCATE {ROLLUP_TABLES}")
    conn.commit()


def reference_counts(
    pings: Iterable[Ping], t_ms: int, window_ms: int, precision: int
) -> dict[str, int]:
    """SPEC, written out: each driver's most recent ping in (t - W, t] (ties on ts: the
    larger geohash-8), counted in that ping's cell."""
    latest: dict[str, tuple[int, str]] = {}
    for p in pings:
        if t_ms - window_ms < p.ts <= t_ms:
            key = (p.ts, geohash.encode(p.lat, p.lon, 8))
            if p.driver_id not in latest or key > latest[p.driver_id]:
                latest[p.driver_id] = key
    counts: dict[str, int] = {}
    for _, gh in latest.values():
        counts[gh[:precision]] = counts.get(gh[:precision], 0) + 1
    return counts
