"""PostgreSQL access: connections, the per-app pool, database creation and migrations."""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from app.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class DatabaseUnavailable(Exception):
    """PostgreSQL is not reachable or lacks PostGIS; the message says what to do."""


def sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def connect(settings: Settings, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(settings.database_url, autocommit=autocommit, connect_timeout=5)


def api_options(settings: Settings, stall_s: float | None = None) -> str:
    """Server settings of the web's database sessions: no API query runs longer than
    ``API_STATEMENT_TIMEOUT_S`` (a month-long scan is refused, not left holding a pooled
    connection and the table's lock); ``stall_s`` also ends a session left idle inside
    its transaction that long (an export whose client stopped reading)."""
    options = f"-c statement_timeout={max(1, int(settings.api_statement_timeout_s * 1000))}"
    if stall_s is not None:
        options += f" -c idle_in_transaction_session_timeout={max(1, int(stall_s * 1000))}"
    return options


def make_pool(settings: Settings, max_size: int = 8) -> ConnectionPool:
    pool = ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "connect_timeout": 5, "options": api_options(settings)},
        name="heatreplay",
    )
    pool.open(wait=False)
    return pool


def ensure_database(settings: Settings, timeout_s: float = 10.0) -> None:
    """Create the configured database if it does not exist (server must be up)."""
    params = conninfo_to_dict(settings.database_url)
    dbname = str(params.get("dbname") or "postgres")
    admin = make_conninfo(settings.database_url, dbname="postgres")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
                ).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"PostgreSQL is not reachable at {_safe(settings.database_url)} ({exc}). "
                    "Start PostgreSQL 15+ or set DATABASE_URL."
                ) from None
            time.sleep(0.3)


def check_postgis(settings: Settings) -> None:
    with connect(settings, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'"
        ).fetchone()
    if not row:
        raise DatabaseUnavailable(
            "PostGIS is not installed in this PostgreSQL server. On Debian: "
            "`apt-get install -y postgresql-15-postgis-3` (match your server's major version)."
        )


def migrate(settings: Settings, revision: str = "head") -> None:
    """Run Alembic migrations to ``revision``, then create day partitions ahead."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = settings.database_url
    command.upgrade(cfg, revision)
    if revision == "head":
        try:
            ensure_partitions_ahead(settings)
        except psycopg.errors.LockNotAvailable:
            # a long reader holds pings; the sink's maintenance pass makes them later
            log.warning("migrate: pings busy; day partitions ahead left to the sink")


# creating a partition locks ``pings`` exclusively: waiting behind a long reader (an
# export, an analyst's query) would queue every other query on pings behind it, so the
# attempt gives up after this and is made again later
PARTITION_LOCK_TIMEOUT = "5s"


def ensure_partitions_ahead(settings: Settings, today: date | None = None) -> None:
    """Day partitions from yesterday to ``PARTITION_DAYS_AHEAD`` days ahead (migrate,
    and every sink's maintenance pass, so midnight never needs one on the write path).
    Raises psycopg.errors.LockNotAvailable if ``pings`` stayed busy."""
    day = today or datetime.now(UTC).date()
    with connect(settings, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
        for offset in range(-1, settings.partition_days_ahead + 1):
            conn.execute(
                "SELECT heatreplay_ensure_day_partition(%s, %s)",
                (day + timedelta(offset), settings.geom_index == "immediate"),
            )


def _safe(url: str) -> str:
    params = conninfo_to_dict(url)
    params.pop("password", None)
    return make_conninfo("", **params)
