"""What a day's (driver_id, ts) index costs and what it buys a driver's path.

`python -m bench.driver_index [--rows 4000000] [--every 1000000]`

On a migrated scratch database, twice over one closed day partition (created as
``GEOM_INDEX=deferred`` does, so the spatial index's own upkeep stays out of the figures),
COPYing the sink's batches (bench/index_growth.py: 20,000 drivers, 5,000 pings a batch):

1. **kept up row by row**: the day created with the ``(driver_id, ts)`` index already on
   it; the PostgreSQL backend's CPU per row for every ``--every`` rows;
2. **built once the day has closed** (what app/driver_index.py does): the day written
   with BRIN(ts) only, then the index built as the builder builds it, timed; its size.

Then the analyst's side on the second day: the API's own path query
(``PATH_POINTS_SQL``) for one driver over the whole day, best of 3, before and after the
build. PostgreSQL alone, no Kafka, no sink process.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from app.analytics_queries import PATH_POINTS_SQL
from app.driver_index import build_driver_index
from app.settings import load_settings
from bench.index_growth import DAY, PARTITION, copy_in_windows
from bench.machine import describe, machine
from bench.stack import cpu_seconds, scratch_database

DRIVER = "drv-000007"  # bench.load's driver ids


def _path_ms(conn: psycopg.Connection) -> tuple[float, int]:
    """Best of 3 of the API's path query for DRIVER over the whole day: ms, points."""
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    params = {"driver": DRIVER, "t0": start, "t1": start + timedelta(days=1), "limit": 100_001}
    best, points = float("inf"), 0
    for _ in range(3):
        t0 = time.perf_counter()
        points = len(conn.execute(PATH_POINTS_SQL, params, prepare=False).fetchall())
        best = min(best, (time.perf_counter() - t0) * 1000)
    return round(best, 1), points


def run(rows: int, every: int, progress: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": rows}
    with (
        scratch_database(load_settings(), "hr_drvidx") as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        conn.execute("SELECT heatreplay_ensure_day_partition(%s, false)", (DAY,))
        conn.execute(f"CREATE INDEX {PARTITION}_driver_ts ON {PARTITION} (driver_id, ts)")
        out["kept_up"] = copy_in_windows(
            conn, rows, every, "index kept up row by row" if progress else None
        )
        conn.execute(f"DROP TABLE {PARTITION}")

        conn.execute("SELECT heatreplay_ensure_day_partition(%s, false)", (DAY,))
        out["brin_only"] = copy_in_windows(conn, rows, every, "BRIN(ts) only" if progress else None)
        conn.execute("ANALYZE pings")
        out["path_ms_without"], out["path_points"] = _path_ms(conn)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        cpu0 = cpu_seconds(pid)
        out["build_s"] = round(build_driver_index(conn, PARTITION), 2)
        out["build_backend_us_per_row"] = round(1e6 * (cpu_seconds(pid) - cpu0) / rows, 2)
        conn.execute("ANALYZE pings")
        out["path_ms_with"], with_points = _path_ms(conn)
        assert with_points == out["path_points"], "the index changed the answer"
        sizes = conn.execute(
            "SELECT pg_relation_size(%s), pg_relation_size(%s)",
            (PARTITION, f"{PARTITION}_driver_ts"),
        ).fetchone()
        assert sizes is not None
        out["heap_mib"], out["index_mib"] = (round(b / 2**20) for b in sizes)
    if progress:
        print(
            f"  built once closed: {out['build_s']} s ({out['build_backend_us_per_row']} us of "
            f"backend CPU per row), {out['index_mib']} MiB beside a {out['heap_mib']} MiB heap\n"
            f"  path of {DRIVER} over the day ({out['path_points']} points): "
            f"{out['path_ms_without']} ms without the index, {out['path_ms_with']} ms with it",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--every", type=int, default=1_000_000, help="rows per printed window")
    args = parser.parse_args()
    print(describe(machine()))
    run(args.rows, args.every)


if __name__ == "__main__":
    main()
