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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from app.db import ensure_partitions_ahead
from app.retention import day_partitions
from app.settings import Settings

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the builder: one at a time per database
LOCK_KEY = 0x6865617467656F  # "heatgeo"
MAINTENANCE_WORK_MEM = "256MB"  # the sorted build's sort memory (PostgreSQL default 64MB)


@dataclass(frozen=True)
class Built:
    partition: str
    seconds: float


def indexed_partitions(conn: psycopg.Connection) -> set[str]:
    """Day partitions with a valid index on ``geom``."""
    rows = conn.execute(
        "SELECT DISTINCT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_index x ON x.indrelid = c.oid AND x.indisvalid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (x.indkey) "
        "WHERE i.inhparent = 'pings'::regclass AND a.attname = 'geom'"
    ).fetchall()
    return {name for (name,) in rows}


def _day_end(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def due_partitions(
    conn: psycopg.Connection, settings: Settings, now: datetime | None = None
) -> list[tuple[str, date]]:
    """Partitions (name, day) lacking a valid spatial index that should have one now,
    newest day first (the days analysts look at soonest): every such partition when
    immediate; when deferred, those whose day ended at least ``geom_index_after_s`` ago.
    Days that retention (``RETENTION_DAYS``) is about to drop are left alone."""
    now = now or datetime.now(UTC)
    indexed = indexed_partitions(conn)
    keep_from = (
        now.date() - timedelta(days=settings.retention_days) if settings.retention_days else None
    )
    due = []
    for name, day in day_partitions(conn).items():
        if name in indexed or (keep_from is not None and day < keep_from):
            continue
        if settings.geom_index == "immediate" or (
            _day_end(day) + timedelta(seconds=settings.geom_index_after_s) <= now
        ):
            due.append((day, name))
    return [(name, day) for day, name in sorted(due, reverse=True)]


def build(conn: psycopg.Connection, partition: str, method: str = "gist") -> float:
    """An index on ``partition``'s ``geom`` (``gist``: one sorted pass, for a closed day;
    ``spgist``: cheaper to keep up row by row, for a day still taking inserts), built
    concurrently on an autocommit connection with ``MAINTENANCE_WORK_MEM`` for its sort.
    Any invalid index on ``geom`` there, left
    by a build cut off, is dropped first. The caller holds ``LOCK_KEY`` (``index_due``)
    or knows no other builder runs. Seconds taken."""
    if method not in ("gist", "spgist"):
        raise ValueError(f"no such index method here: {method}")
    started = time.perf_counter()
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    invalid = conn.execute(
        "SELECT x.indexrelid::regclass::text FROM pg_index x "
        "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) "
        "WHERE x.indrelid = %s::regclass AND a.attname = 'geom' AND NOT x.indisvalid",
        (partition,),
    ).fetchall()
    for (index,) in invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(index)))
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} USING {} (geom)").format(
            sql.Identifier(f"{partition}_geom_{method}"),
            sql.Identifier(partition),
            sql.SQL(method),
        )
    )
    return time.perf_counter() - started


def index_due(
    settings: Settings,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """One pass: build every due partition's index (GiST for a day that has ended,
    SP-GiST for one still taking inserts). Returns what was built; nothing if another
    builder holds the lock. A partition that fails (dropped by retention meanwhile, say)
    is logged and left for the next pass."""
    say = progress or (lambda line: log.info(line))
    built: list[Built] = []
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not (got and got[0]):
            say("geom index: another builder is at work; nothing built")
            return built
        try:
            at = now or datetime.now(UTC)
            due = due_partitions(conn, settings, at)
            for n, (partition, day) in enumerate(due, 1):
                method = "gist" if _day_end(day) <= at else "spgist"
                if progress:
                    progress(f"geom index: building {partition} ({n}/{len(due)}, {method})")
                try:
                    seconds = build(conn, partition, method)
                except psycopg.Error as exc:
                    log.warning(
                        "geom index: %s not built: %s", partition, exc,
                        extra={"partition_table": partition},
                    )  # fmt: skip
                    continue
                built.append(Built(partition, seconds))
                log.info(
                    "geom index: built %s in %.1f s", partition, seconds,
                    extra={"partition_table": partition},
                )  # fmt: skip
        finally:
            if not conn.closed:  # a lost connection released the lock with it
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return built


class GeomIndexer(threading.Thread):
    """Every ``geom_index_check_s`` until ``stop``: the day partitions ahead
    (``ensure_partitions_ahead``: the sink then never creates one at midnight, when a
    long reader could make it wait) and ``index_due``. An outage or a failed pass is
    logged and tried again next time (ingest never waits for it)."""

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
            self.passes += 1
            self.stop.wait(self.settings.geom_index_check_s)
