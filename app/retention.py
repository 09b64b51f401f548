"""History retention: drop whole day partitions of ``pings``; keep every rollup.

Dropping a partition is instant and leaves no bloat, where ``DELETE`` of old rows would
rewrite the table and fight the sink's COPY for I/O. Rollups (``driver_minutes`` and
``minute_stats``) are separate tables and are never touched, so timelines and peaks over
old periods keep working after their raw pings are gone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from app.settings import Settings

log = logging.getLogger(__name__)

_DAY_PARTITION = re.compile(r"pings_(\d{8})")


@dataclass(frozen=True)
class RetentionResult:
    cutoff: date | None  # partitions of days before this were dropped; None: keep all
    dropped: list[str]
    kept: list[str]


def day_partitions(conn: psycopg.Connection) -> dict[str, date]:
    """The day partitions of ``pings`` (name -> day), from the catalog."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'pings'::regclass"
    ).fetchall()
    out: dict[str, date] = {}
    for (name,) in rows:
        match = _DAY_PARTITION.fullmatch(name)
        if match:
            out[name] = datetime.strptime(match.group(1), "%Y%m%d").date()
    return out


def apply_retention(
    settings: Settings,
    days: int | None = None,
    today: date | None = None,
    dry_run: bool = False,
    lock_timeout_s: float = 5.0,
) -> RetentionResult:
    """Drop the day partitions that end on or before ``today - days`` (UTC), so at
    least ``days`` full days of raw pings are kept. ``days=0`` keeps everything."""
    keep = settings.retention_days if days is None else days
    if keep < 0:
        raise ValueError("RETENTION_DAYS must be >= 0 (0 keeps everything)")
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        parts = day_partitions(conn)
        if keep == 0:
            return RetentionResult(None, [], sorted(parts))
        cutoff = (today or datetime.now(UTC).date()) - timedelta(days=keep)
        doomed = sorted(name for name, day in parts.items() if day < cutoff)
        # a short lock wait: the sink holds the parent briefly per batch, and retention
        # can always run again later, whereas a queued ACCESS EXCLUSIVE lock would stall
        # every insert behind it
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s * 1000)}ms"))
        )
        dropped: list[str] = []
        for name in doomed:
            if dry_run:
                dropped.append(name)
                continue
            try:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            except psycopg.errors.LockNotAvailable:
                # busy (an index build, a long query): kept for the next run, and the
                # other days are still dropped
                log.warning("retention: %s busy, kept for now", name)
                continue
            dropped.append(name)
            log.info("retention: dropped partition", extra={"partition_table": name})
        kept = sorted(set(parts) - set(dropped))
    return RetentionResult(cutoff, dropped, kept)
