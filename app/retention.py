"""History retention: drop whole day partitions of ``pings``; keep every rollup.

Dropping a partition is instant and leaves no bloat, where ``DELETE`` of old rows would
rewrite the table and fight the sink's COPY for I/O. Rollups (``driver_minutes`` and
``minute_stats``) are separate tables and are never touched, so timelines and peaks over
old periods keep working after their raw pings are gone.

A day goes in two steps: ``ALTER TABLE pings DETACH PARTITION … CONCURRENTLY``, then
``DROP TABLE`` of the detached table. ``DROP TABLE`` on the partition needed ``pings``'
ACCESS EXCLUSIVE lock: waiting for it behind a long reader (an export, an analyst's
query) queued every insert and query on ``pings`` behind it for up to the lock timeout.
The concurrent detach takes SHARE UPDATE EXCLUSIVE, which reads and writes pass, then
waits for the older transactions. If that wait reaches the lock
timeout the day is left *detach pending* (no longer seen by queries): the next run
completes it (``FINALIZE``) and drops it; a late ping for it first puts it back
(``heatreplay_ensure_day_partition``, migration 0008).
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
# on a day this module detached and is about to drop: a table left detached by a run
# that stopped before its DROP is recognised by it (and nothing else named like a day)
MARK = "heatreplay retention: detached, to be dropped"


@dataclass(frozen=True)
class RetentionResult:
    cutoff: date | None  # partitions of days before this were dropped; None: keep all
    dropped: list[str]
    kept: list[str]


def day_partitions(conn: psycopg.Connection) -> dict[str, date]:
    """The day partitions of ``pings`` (name -> day), from the catalog; a day whose
    detach is pending is still listed (``day_states``)."""
    return {name: day for name, (day, state) in day_states(conn).items() if state != "detached"}


def day_states(conn: psycopg.Connection) -> dict[str, tuple[date, str]]:
    """The day tables (name -> (day, state)): ``attached``; ``pending`` (a concurrent
    detach cut off); ``detached`` (one this module detached, marked ``MARK``, and did not
    get to drop). Other tables named like a day are not ours and are left alone."""
    rows = conn.execute(
        "SELECT c.relname, CASE WHEN i.inhrelid IS NULL THEN 'detached' "
        "WHEN i.inhdetachpending THEN 'pending' ELSE 'attached' END "
        "FROM pg_class c "
        "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'pings'::regclass "
        "WHERE c.relkind = 'r' AND c.relname ~ '^pings_[0-9]{8}$' "
        "AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'pings'::regclass) "
        "AND (i.inhrelid IS NOT NULL OR obj_description(c.oid, 'pg_class') = %s)",
        (MARK,),
    ).fetchall()
    out: dict[str, tuple[date, str]] = {}
    for name, state in rows:
        match = _DAY_PARTITION.fullmatch(name)
        if match:
            out[name] = (datetime.strptime(match.group(1), "%Y%m%d").date(), state)
    return out


def _remove(conn: psycopg.Connection, name: str) -> bool:
    """Mark, detach (or complete a pending detach) and drop the day ``name``, holding
    its advisory lock, the one ``heatreplay_ensure_day_partition`` takes to put a day
    back, so the two never act on one day at once. False if it was gone already."""
    table = sql.Identifier(name)
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))  # lock_timeout bounds it
    try:
        state = day_states(conn).get(name, (None, None))[1]
        if state is None:
            return False
        if state != "detached":
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(MARK)))
        if state == "attached":
            conn.execute(
                sql.SQL("ALTER TABLE pings DETACH PARTITION {} CONCURRENTLY").format(table)
            )
        elif state == "pending":
            conn.execute(sql.SQL("ALTER TABLE pings DETACH PARTITION {} FINALIZE").format(table))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        return True
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))


def _restore(conn: psycopg.Connection, name: str, day: date) -> None:
    """Attach again a day a run left pending or detached that is no longer to be
    dropped (``RETENTION_DAYS`` raised since): the partition function completes the
    detach and attaches the table, rows and all."""
    try:
        conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,))
    except psycopg.Error as exc:
        log.warning("retention: %s not attached again, next run tries (%s)", name, exc)
    else:
        log.info("retention: attached partition again", extra={"partition_table": name})


def apply_retention(
    settings: Settings,
    days: int | None = None,
    today: date | None = None,
    dry_run: bool = False,
    lock_timeout_s: float = 5.0,
) -> RetentionResult:
    """Drop the day partitions that end on or before ``today - days`` (UTC), so at
    least ``days`` full days of raw pings are kept. ``days=0`` keeps everything. A day
    another session holds past ``lock_timeout_s`` is kept for the next run; if that
    left its detach pending, the other old days wait for the next run too (one pending
    detach per table), which completes it first."""
    keep = settings.retention_days if days is None else days
    if keep < 0:
        raise ValueError("RETENTION_DAYS must be >= 0 (0 keeps everything)")
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        # the lock waits are short and a busy day is simply kept for the next run; the
        # detach's own wait holds up no reader or writer of pings, only DDL on it
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s * 1000)}ms"))
        )
        cutoff = None if keep == 0 else (today or datetime.now(UTC).date()) - timedelta(days=keep)
        states = day_states(conn)
        if not dry_run:
            restore = [
                (name, day)
                for name, (day, state) in sorted(states.items())
                if state != "attached" and (cutoff is None or day >= cutoff)
            ]
            for name, day in restore:  # left half-removed, and now to be kept
                _restore(conn, name, day)
            if restore:
                states = day_states(conn)
        parts = sorted(name for name, (_, state) in states.items() if state != "detached")
        if cutoff is None:
            return RetentionResult(None, [], parts)
        # a pending detach first: PostgreSQL allows one per table at a time
        doomed = sorted(
            (name for name, (day, _) in states.items() if day < cutoff),
            key=lambda name: (states[name][1] != "pending", name),
        )
        dropped: list[str] = []
        for name in doomed:
            if dry_run:
                dropped.append(name)
                continue
            try:
                removed = _remove(conn, name)
            except psycopg.Error as exc:
                # busy (an index build, a long query; another day's detach pending), or
                # anything else: kept for the next run, and the run goes on
                log.warning("retention: %s kept for now (%s)", name, exc)
                continue
            if removed:
                dropped.append(name)
                log.info("retention: dropped partition", extra={"partition_table": name})
        kept = sorted(set(parts) - set(dropped))
    return RetentionResult(cutoff, sorted(dropped), kept)
