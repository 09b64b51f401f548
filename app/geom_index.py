"""The spatial index of each day partition of ``pings``, built when it is due.

``GEOM_INDEX=immediate`` (the default, SPEC's contract): a day partition is created with
its SP-GiST index (``heatreplay_ensure_day_partition``), so ingest maintains it row by
row. That upkeep grows with the partition: 4.4 us of PostgreSQL CPU per row at 1M rows,
12.3 at 12M (docs/performance.md, twelfth round).

``GEOM_INDEX=deferred``: partitions are created without it, and once a day has been
closed for ``GEOM_INDEX_AFTER_S`` this module builds a GiST index over it in one sorted
pass (1.6 us per row; BRIN(ts) alone keeps ingest at ~1 us per row at any size). Until
then a spatial filter on that day is answered through its time bound (BRIN), not an
index: bound ``ts`` on today's pings.

The sink runs ``GeomIndexer`` beside its consumer (every ``GEOM_INDEX_CHECK_S``); it
also repairs a partition left without a valid index in either mode (a build cut off
leaves an INVALID one, which is dropped and built again). ``heatreplay geom-index``
runs one pass by hand. Builds are ``CONCURRENTLY``: late pings for that day keep being
written while it runs. One builder at a time per database (an advisory lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import date, datetime

import psycopg
from psycopg import sql

from app.db import ensure_partitions_ahead
from app.driver_index import driver_index_due
from app.index_builds import (
    MAINTENANCE_WORK_MEM,
    Built,
    closed_for,
    day_end,
    drop_invalid,
    retained_from,
    run_pass,
    valid_index_on,
)
from app.retention import day_partitions
from app.settings import Settings

log = logging.getLogger(__name__)


def indexed_partitions(conn: psycopg.Connection) -> set[str]:
    """Day partitions with a valid index on ``geom``."""
    return valid_index_on(conn, "geom")


def due_partitions(
    conn: psycopg.Connection, settings: Settings, now: datetime
) -> list[tuple[str, date]]:
    """Partitions (name, day) lacking a valid spatial index that should have one now,
    newest day first (the days analysts look at soonest): every such partition when
    immediate; when deferred, those whose day ended at least ``geom_index_after_s`` ago.
    Days that retention (``RETENTION_DAYS``) is about to drop are left alone."""
    indexed = indexed_partitions(conn)
    keep_from = retained_from(settings, now)
    due = []
    for name, day in day_partitions(conn).items():
        if name in indexed or (keep_from is not None and day < keep_from):
            continue
        if settings.geom_index == "immediate" or closed_for(day, settings.geom_index_after_s, now):
            due.append((day, name))
    return [(name, day) for day, name in sorted(due, reverse=True)]


def build(conn: psycopg.Connection, partition: str, method: str = "gist") -> float:
    """An index on ``partition``'s ``geom`` (``gist``: one sorted pass, for a closed day;
    ``spgist``: cheaper to keep up row by row, for a day still taking inserts), built
    concurrently on an autocommit connection with ``MAINTENANCE_WORK_MEM`` for its sort.
    Any invalid index on ``geom`` there, left by a build cut off, is dropped first. The
    caller holds ``LOCK_KEY`` (``index_due``) or knows no other builder runs. Seconds
    taken."""
    if method not in ("gist", "spgist"):
        raise ValueError(f"no such index method here: {method}")
    started = time.perf_counter()
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    drop_invalid(conn, partition, "geom")
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} USING {} (geom)").format(
            sql.Identifier(f"{partition}_geom_{method}"),
            sql.Identifier(partition),
            sql.SQL(method),
        )
    )
    return time.perf_counter() - started


def _method(day: date, now: datetime) -> str:
    return "gist" if day_end(day) <= now else "spgist"


def index_due(
    settings: Settings,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """One pass: build every due partition's spatial index (GiST for a day that has
    ended, SP-GiST for one still taking inserts). Returns what was built; nothing if
    another builder holds the lock. A partition that fails (dropped by retention
    meanwhile, say) is logged and left for the next pass."""
    return run_pass(
        settings,
        "geom index",
        lambda conn, at: due_partitions(conn, settings, at),
        lambda conn, partition, day, at: build(conn, partition, _method(day, at)),
        _method,
        now,
        progress,
    )


class GeomIndexer(threading.Thread):
    """Every ``geom_index_check_s`` until ``stop``: the day partitions ahead
    (``ensure_partitions_ahead``: the sink then never creates one at midnight, when a
    long reader could make it wait), ``index_due`` (spatial) and ``driver_index_due``
    (a driver's pings on closed days). An outage or a failed pass is logged and tried
    again next time (ingest never waits for it)."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        super().__init__(name="geom-indexer", daemon=True)
        self.settings = settings
        self.stop = stop
        self.passes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ensure_partitions_ahead(self.settings)
            except Exception:
                log.warning("partitions ahead: not made this pass", exc_info=True)
            try:
                index_due(self.settings)
            except Exception:
                log.warning("geom index: pass failed", exc_info=True)
            try:
                driver_index_due(self.settings)
            except Exception:
                log.warning("driver index: pass failed", exc_info=True)
            self.passes += 1
            self.stop.wait(self.settings.geom_index_check_s)
