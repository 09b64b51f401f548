"""What the builders of day partitions' indexes share: one builder at a time per
database (an advisory lock), the sort memory of a build, when a day has closed, the
days retention is about to drop (never indexed), and the pass that builds whatever is
due, newest day first, leaving a partition that fails for the next pass.

The spatial index (app/geom_index.py) and a driver's index (app/driver_index.py) are
built this way, by the sink's maintenance thread (``GeomIndexer``) or ``heatreplay
geom-index``; every build is ``CONCURRENTLY``, so late pings for that day keep being
written while it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from app.settings import Settings

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the builders: one build at a time per database
LOCK_KEY = 0x6865617467656F  # "heatgeo"
MAINTENANCE_WORK_MEM = "256MB"  # a sorted build's sort memory (PostgreSQL default 64MB)


@dataclass(frozen=True)
class Built:
    partition: str
    seconds: float


def day_end(day: date) -> datetime:
    """The end of ``day`` (UTC), the upper bound of its partition."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def closed_for(day: date, seconds: float, now: datetime) -> bool:
    """``day`` ended at least ``seconds`` before ``now``."""
    return day_end(day) + timedelta(seconds=seconds) <= now


def retained_from(settings: Settings, now: datetime) -> date | None:
    """The first day retention keeps (``RETENTION_DAYS``); None keeps every day. Days
    before it are about to be dropped, so no index is built on them."""
    if not settings.retention_days:
        return None
    return now.date() - timedelta(days=settings.retention_days)


def drop_invalid(conn: psycopg.Connection, partition: str, first_column: str) -> None:
    """Drop the INVALID indexes whose first column is ``first_column`` on ``partition``
    (what a ``CREATE INDEX CONCURRENTLY`` cut off leaves behind)."""
    invalid = conn.execute(
        "SELECT x.indexrelid::regclass::text FROM pg_index x "
        "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
        "WHERE x.indrelid = %s::regclass AND a.attname = %s AND NOT x.indisvalid",
        (partition, first_column),
    ).fetchall()
    for (index,) in invalid:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.SQL(index)))


def valid_index_on(conn: psycopg.Connection, first_column: str) -> set[str]:
    """Day partitions of ``pings`` with a valid index whose first column is
    ``first_column``."""
    rows = conn.execute(
        "SELECT DISTINCT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_index x ON x.indrelid = c.oid AND x.indisvalid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] "
        "WHERE i.inhparent = 'pings'::regclass AND a.attname = %s",
        (first_column,),
    ).fetchall()
    return {name for (name,) in rows}


Due = Callable[[psycopg.Connection, datetime], list[tuple[str, date]]]
Build = Callable[[psycopg.Connection, str, date, datetime], float]


def run_pass(
    settings: Settings,
    label: str,
    due: Due,
    build: Build,
    what: Callable[[date, datetime], str],
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Built]:
    """Under the builders' lock: ``build`` every partition ``due`` lists, in its order
    (``what`` names the index for progress; ``build`` returns seconds). Returns what was built;
    nothing if another builder holds the lock. A partition that fails (dropped by
    retention meanwhile, say) is logged and left for the next pass."""
    say = progress or (lambda line: log.info(line))
    built: list[Built] = []
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not (got and got[0]):
            say(f"{label}: another builder is at work; nothing built")
            return built
        try:
            at = now or datetime.now(UTC)
            todo = due(conn, at)
            for n, (partition, day) in enumerate(todo, 1):
                if progress:
                    progress(f"{label}: building {partition} ({n}/{len(todo)}, {what(day, at)})")
                try:
                    seconds = build(conn, partition, day, at)
                except psycopg.Error as exc:
                    log.warning(
                        "%s: %s not built: %s", label, partition, exc,
                        extra={"partition_table": partition},
                    )  # fmt: skip
                    continue
                built.append(Built(partition, seconds))
                log.info(
                    "%s: built %s in %.1f s", label, partition, seconds,
                    extra={"partition_table": partition},
                )  # fmt: skip
        finally:
            if not conn.closed:  # a lost connection released the lock with it
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return built
