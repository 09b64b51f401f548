"""docs/sql.md cannot rot: every ```sql block in it runs here against the sample data set
the page describes, as the owner and as `heatreplay_analyst`, and when a ```text block
follows it, the result must equal that text. The analyst role can read everything
(also day partitions created after the migration) and change nothing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.copy_rows import COPY_SQL, encode_copy
from app.db import ROOT, migrate
from app.ping import Ping
from app.settings import Settings

DOC = ROOT / "docs" / "sql.md"
ROLE = "heatreplay_analyst"
OWNER_ONLY = "-- run as: owner"
BLOCK = re.compile(r"```sql\n(.*?)```(?:\s*```text\n(.*?)```)?", re.S)
DAYS = [date(2026, 11, 16) + timedelta(days=i) for i in range(7)]  # Mon..Sun


def at(day: date, hh: int, mm: int, ss: int = 0) -> int:
    moment = datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def sample_fleet() -> list[Ping]:
    """The sample data set of docs/sql.md ("The sample data set")."""
    pings: list[Ping] = []
    friday = date(2026, 11, 20)
    for day in DAYS:
        for minute, lon in enumerate((3.37, 3.38, 3.39)):
            pings.append(Ping("d1", 6.5, lon, at(day, 8, minute), speed_kmh=40.0, heading=90.0))
        pings.append(Ping("d2", 6.5, 3.37, at(day, 8, 0, 30)))
        pings.append(Ping("d2", 6.5, 3.37, at(day, 8, 1, 30)))
    for ss, lat in ((0, 6.5200), (10, 6.5222), (20, 6.5244)):
        pings.append(Ping("d3", lat, 3.3792, at(friday, 12, 0, ss)))
    pings.append(Ping("d4", 6.6000, 3.3500, at(friday, 12, 0, 0)))
    pings.append(Ping("d4", 6.5271, 3.3792, at(friday, 12, 0, 15)))
    pings.append(Ping("d5", 6.5244, 3.3810, at(friday, 12, 0, 5)))
    pings.append(Ping("d5", 6.5244, 3.3864, at(friday, 12, 0, 18)))
    return pings


def doc_blocks() -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def render(cur: psycopg.Cursor[Any]) -> str:
    """Rows as the docs print them: a header, then one line per row, cells joined by |."""
    if cur.description is None:
        return ""
    lines = [" | ".join(c.name for c in cur.description)]
    lines += [" | ".join(cell(v) for v in row) for row in cur.fetchall()]
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        assert value.utcoffset() == timedelta(0)
        return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal | date | int | float | str):
        return str(value)
    raise AssertionError(f"the docs' examples should select printable values, not {value!r}")


@pytest.fixture(scope="module")
def sample_db(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE pings, driver_minutes, minute_stats")
        for day in DAYS:
            conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,))
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(encode_copy(sample_fleet()))
    yield database_url


def run_block(conn: psycopg.Connection, text: str, role: str | None) -> str:
    """The block's last statement's result, inside a transaction that is rolled back."""
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        if role:
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        out = ""
        for statement in split_statements(text):
            cur.execute(statement)  # type: ignore[call-overload]
            out = render(cur)
        return out


def split_statements(text: str) -> list[str]:
    # the docs keep semicolons out of strings and comments, so this split is exact
    return [s.strip() for s in text.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(s: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in s.splitlines())


def test_docs_have_the_promised_examples() -> None:
    text = " ".join(b for b, _ in doc_blocks())
    for needle in ("ST_MakeLine", "::geography", "ST_DWithin", "ST_Intersects", "cell_hour_rank"):
        assert needle in text, needle
    assert sum(1 for _, expected in doc_blocks() if expected is not None) >= 8


def test_every_sql_block_runs_with_the_documented_result(sample_db: str) -> None:
    with psycopg.connect(sample_db) as conn:
        for number, (block, expected) in enumerate(doc_blocks(), 1):
            got = run_block(conn, block, None)
            if expected is not None:
                assert got == expected, f"block {number}:\n{block}\ngot:\n{got}"


def test_the_analyst_role_reads_every_example(sample_db: str) -> None:
    with psycopg.connect(sample_db) as conn:
        for number, (block, expected) in enumerate(doc_blocks(), 1):
            if block.lstrip().startswith(OWNER_ONLY):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    run_block(conn, block, ROLE)
                continue
            got = run_block(conn, block, ROLE)
            if expected is not None:
                assert got == expected, f"block {number} as {ROLE}:\n{block}\ngot:\n{got}"


WRITES = [
    "INSERT INTO pings (ts, driver_id, geom, geohash) "
    "VALUES ('2026-11-20Z', 'x', ST_Point(0, 0, 4326), 's0000000')",
    "INSERT INTO pings_20261120 (ts, driver_id, geom, geohash) "
    "VALUES ('2026-11-20Z', 'x', ST_Point(0, 0, 4326), 's0000000')",
    "UPDATE pings SET driver_id = 'x'",
    "UPDATE pings_20261118 SET speed_kmh = 0",
    "DELETE FROM pings",
    "DELETE FROM driver_minutes",
    "DELETE FROM minute_stats",
    "TRUNCATE pings",
    "TRUNCATE pings_20261116",
    "DROP TABLE pings",
    "DROP TABLE pings_20261117",
    "DROP VIEW cell_minutes",
    "ALTER TABLE pings ADD COLUMN x int",
    "CREATE TABLE public.mine (x int)",
    "CREATE INDEX ON pings_20261119 (driver_id)",
    "SELECT heatreplay_ensure_day_partition('2031-01-01')",
    "UPDATE sink_offsets SET next_offset = 0",
    # a GRANT by a non-owner only warns ("no privileges were granted"): the INSERT fails
    "GRANT INSERT ON pings TO heatreplay_analyst; "
    "INSERT INTO driver_minutes VALUES ('2026-11-20Z', 'x')",
]


def test_the_analyst_role_cannot_write(sample_db: str) -> None:
    with psycopg.connect(sample_db) as conn:
        for statement in WRITES:
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match=r"permission denied|must be owner"
            ):
                run_block(conn, statement, ROLE)
        # day partitions created after the migration are readable directly
        for day in DAYS:
            name = f"pings_{day:%Y%m%d}"
            got = run_block(conn, f"SELECT count(*) AS n FROM {name}", ROLE)
            assert got == f"n\n{12 if day == date(2026, 11, 20) else 5}\n", name
        assert run_block(conn, "SELECT count(*) AS n FROM pings", ROLE) == "n\n42\n"


def analytics_state(conn: psycopg.Connection) -> tuple[int, bool]:
    """(how many of the three views exist, whether the analyst may read pings here)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_views WHERE viewname IN "
        "('cell_minutes', 'driver_tracks_hourly', 'cell_hour_rank')"
    ).fetchone()
    assert row is not None
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
        return int(row[0]), False
    granted = conn.execute("SELECT has_table_privilege(%s, 'pings', 'SELECT')", (ROLE,)).fetchone()
    assert granted is not None
    return int(row[0]), bool(granted[0])


def test_migration_downgrade_and_upgrade(base_settings: Settings) -> None:
    name = f"hr_test_mig_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo(base_settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(base_settings.database_url, dbname=name)
    try:
        migrate(base_settings.with_(database_url=url))
        cfg = Config(str(Path(ROOT) / "alembic.ini"))
        cfg.set_main_option("script_location", str(ROOT / "migrations"))
        cfg.attributes["database_url"] = url
        with psycopg.connect(url, autocommit=True) as conn:
            assert analytics_state(conn) == (3, True)
        command.downgrade(cfg, "0002")
        with psycopg.connect(url, autocommit=True) as conn:
            # the role may live on for other databases, but holds nothing in this one
            assert analytics_state(conn) == (0, False)
        command.upgrade(cfg, "head")
        with psycopg.connect(url, autocommit=True) as conn:
            assert analytics_state(conn) == (3, True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
