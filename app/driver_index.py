"""A driver's pings found by index once their day has closed: a btree on
``(driver_id, ts)`` for each day partition of ``pings``.

Without it, a driver's path (``/api/analytics/path``, the README's SQL) reads every row
of every day in its range: a month of a fleet's pings for one driver's few thousand.
Kept up row by row, such an index cost PostgreSQL ~5-10 us of CPU per row, growing with
the day (docs/performance.md, fourteenth round): ingest would pay what the spatial index
already costs it again. Built in one sorted pass once the day has closed, it costs about
a microsecond per row, once.

So a closed day gets it ``GEOM_INDEX_AFTER_S`` after its end, in either ``GEOM_INDEX``
mode, built ``CONCURRENTLY`` by the sink's maintenance thread (``GeomIndexer``, every
``GEOM_INDEX_CHECK_S``) or ``heatreplay geom-index``, newest day first, under the same
builder lock as the spatial index. Today's pings of one driver are found by scanning
today's partition (bounded by ``API_STATEMENT_TIMEOUT_S`` at the API).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime

import psycopg
from psycopg import sql

from app.index_builds import (
    MAINTENANCE_WORK_MEM,
    Built,
    closed_for,
    drop_invalid,
    retained_from,
    run_pass,
    valid_index_on,
)
from app.retention import day_partitions
from app.settings import Settings


def driver_indexed_partitions(conn: psycopg.Connection) -> set[str]:
    """Day partitions with a valid index led by ``driver_id``."""
    return valid_index_on(conn, "driver_id")


def due_driver_partitions(
    conn: psycopg.Connection, settings: Settings, now: datetime
) -> list[tuple[str, date]]:
    """Partitions (name, day) without a valid driver index whose day ended at least
    ``geom_index_after_s`` ago, newest first; days retention is about to drop are left
    alone."""
    indexed = driver_indexed_partitions(conn)
    keep_from = retained_from(settings, now)
    due = [
        (day, name)
        for name, day in day_partitions(conn).items()
        if name not in indexed
        and (keep_from is None or day >= keep_from)
        and closed_for(day, settings.geom_index_after_s, now)
    ]
    return [(name, day) for day, name in sorted(due, reverse=True)]


def build_driver_index(conn: psycopg.Connection, partition: str) -> float:
    """``partition``'s ``(driver_id, ts)`` btree, built concurrently on an autocommit
    connection with ``MAINTENANCE_WORK_MEM`` for its sort (an invalid one left by a build
    cut off is dropped first). Seconds."""
    started = time.perf_counter()
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    drop_invalid(conn, partition, "driver_id")
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} (driver_id, ts)").format(
            sql.Identifier(f"{partition}_driver_ts"), sql.Identifier(partition)
        )
    )
    return time.perf_counter() - started


def driver_index_due(
    settings: Settings,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """One pass: the driver index of every closed day due one. Nothing if another
    builder holds the lock."""
    return run_pass(
        settings,
        "driver index",
        lambda conn, at: due_driver_partitions(conn, settings, at),
        lambda conn, partition, day, at: build_driver_index(conn, partition),
        lambda day, at: "btree (driver_id, ts)",
        now,
        progress,
    )
