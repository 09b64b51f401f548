"""What the spatial index costs ingest as a day partition grows, and what deferring it costs.

`python -m bench.index_growth [--rows 6000000] [--every 1000000] [--modes immediate,deferred]
[--arrival-order]`

For each GEOM_INDEX mode, on a migrated scratch database: COPYs the sink's batches (5,000
pings of 20,000 drivers moving along their own tracks with GPS noise, every ping at its
own point, rows in the sink's Z-order) into one day partition created as that mode
creates it, and prints the PostgreSQL backend's CPU and the wall time per row for every
``--every`` rows. Then, for deferred, builds the GiST index as the builder does
(app/geom_index.py) and times it. Last, the analyst's side: a ~1 km box over the whole
day and over its first minute, best of 3 (PostgreSQL's defaults,
JIT included, as an analyst's session has them), with and without the index.

PostgreSQL alone, no Kafka, no sink process: this isolates index upkeep from the rest.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from app.copy_rows import COPY_SQL, HEADER, TRAILER, encode_rows, rows_in_spatial_order
from app.geom_index import build
from app.ping import Ping
from app.settings import load_settings
from bench.load import LAGOS, NOISE_DEG, STEPS, _tracks
from bench.machine import describe, machine
from bench.stack import cpu_seconds, scratch_database

DRIVERS = 20_000
BATCH = 5_000
DAY = date(2001, 1, 1)  # a closed day: the builder's case
PARTITION = f"pings_{DAY:%Y%m%d}"
BOX = "ST_MakeEnvelope(3.395, 6.545, 3.405, 6.555, 4326)"  # ~1.1 km, mid-Lagos
QUERY = (
    f"SELECT count(*) FROM pings WHERE ts >= %(lo)s AND ts < %(hi)s AND ST_Intersects(geom, {BOX})"
)


def batches(rows: int, seed: int = 7, spatial: bool = True) -> Any:
    """The sink's COPY streams: each driver pings every 5 s, one step along its track;
    each batch's rows in the sink's Z-order (``spatial``) or as they arrived."""
    rnd = random.Random(seed)
    tracks = _tracks(DRIVERS, LAGOS)
    start_ms = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() * 1000)
    for k in range(0, rows, BATCH):
        pings = []
        for j in range(k, min(k + BATCH, rows)):
            n, r = j % DRIVERS, j // DRIVERS
            lat0, lon0, dlat, dlon, heading = tracks[n]
            step = r % STEPS
            lat = lat0 + dlat * step + (rnd.random() - 0.5) * NOISE_DEG
            lon = lon0 + dlon * step + (rnd.random() - 0.5) * NOISE_DEG
            ts = start_ms + r * 5_000 + n // 4
            pings.append(Ping(f"drv-{n:06d}", round(lat, 6), round(lon, 6), ts, 30.5, heading))
        body = rows_in_spatial_order(pings) if spatial else encode_rows(pings)
        assert body is not None
        yield len(pings), HEADER + body + TRAILER


def query_ms(conn: psycopg.Connection, lo: datetime, hi: datetime) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        row = conn.execute(QUERY, {"lo": lo, "hi": hi}).fetchone()
        best = min(best, time.perf_counter() - started)
        count = int(row[0]) if row else 0
    return round(best * 1000, 1), count


def pages_read(conn: psycopg.Connection, lo: datetime, hi: datetime) -> int:
    """Buffers the query touches (shared hit + read): what it would read from disk with
    nothing cached, the case of an analyst's months of history."""
    plan = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERY, {"lo": lo, "hi": hi}
    ).fetchone()
    top = plan[0][0]["Plan"] if plan else {}
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def queries(conn: psycopg.Connection, label: str, progress: bool = True) -> dict[str, Any]:
    day0 = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    minute = (day0, day0 + timedelta(minutes=1))
    day_ms, day_n = query_ms(conn, day0, day0 + timedelta(days=1))
    min_ms, min_n = query_ms(conn, *minute)
    day_pages = pages_read(conn, day0, day0 + timedelta(days=1))
    if progress:
        print(
            f"  query, {label}: box over the day {day_ms} ms ({day_n} pings, {day_pages:,} "
            f"pages), over a minute {min_ms} ms ({min_n} pings)",
            flush=True,
        )
    return {
        f"{label}_box_day_pages": day_pages,
        f"{label}_box_day_ms": day_ms,
        f"{label}_box_minute_ms": min_ms,
        f"{label}_box_day_pings": day_n,
        f"{label}_box_minute_pings": min_n,
    }


def copy_in_windows(
    conn: psycopg.Connection, rows: int, every: int, label: str | None, spatial: bool = True
) -> list[dict[str, Any]]:
    """COPY ``rows`` of ``batches`` into today's day partition through ``conn``; the
    backend's CPU and the wall time per row for every ``every`` rows (printed under
    ``label`` unless None)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    windows: list[dict[str, Any]] = []
    written, cpu0, wall0, done = 0, cpu_seconds(pid), time.perf_counter(), 0
    for n, stream in batches(rows, spatial=spatial):
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(stream)
        written += n
        done += n
        if written >= every or done >= rows:
            cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
            window = {
                "rows_in_partition": done,
                "backend_us_per_row": round(1e6 * (cpu1 - cpu0) / written, 2),
                "wall_us_per_row": round(1e6 * (wall1 - wall0) / written, 2),
            }
            windows.append(window)
            if label is not None:
                print(
                    f"  {label}, {done:,} rows: backend {window['backend_us_per_row']} us/row, "
                    f"wall {window['wall_us_per_row']} us/row",
                    flush=True,
                )
            written, cpu0, wall0 = 0, cpu1, wall1
    return windows


def run(
    mode: str, rows: int, every: int, progress: bool = True, spatial: bool = True
) -> dict[str, Any]:
    order = "z-order" if spatial else "arrival order"
    out: dict[str, Any] = {"mode": mode, "order": order, "rows": rows, "windows": []}
    with (
        scratch_database(load_settings(), "hr_idxgrowth") as settings,
        psycopg.connect(settings.database_url, autocommit=True) as conn,
    ):
        conn.execute("SELECT heatreplay_ensure_day_partition(%s, %s)", (DAY, mode == "immediate"))
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        out["windows"] = copy_in_windows(
            conn, rows, every, f"{mode}, {order}" if progress else None, spatial
        )
        conn.execute("ANALYZE pings")
        if mode == "deferred":
            out.update(queries(conn, "unindexed", progress))
            cpu0 = cpu_seconds(pid)
            seconds = build(conn, PARTITION)
            out["build_s"] = round(seconds, 2)
            out["build_backend_us_per_row"] = round(1e6 * (cpu_seconds(pid) - cpu0) / rows, 2)
            if progress:
                print(
                    f"  deferred: GiST built over {rows:,} rows in {seconds:.1f} s "
                    f"({out['build_backend_us_per_row']} us of backend CPU per row)",
                    flush=True,
                )
            conn.execute("ANALYZE pings")
        out.update(queries(conn, "indexed", progress))
        size = conn.execute("SELECT pg_total_relation_size(%s)", (PARTITION,)).fetchone()
        out["partition_mib"] = round(size[0] / 2**20) if size else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--every", type=int, default=1_000_000, help="rows per printed window")
    parser.add_argument("--modes", default="immediate,deferred")
    parser.add_argument(
        "--arrival-order",
        action="store_true",
        help="COPY each batch's rows as they arrived, not in the sink's Z-order",
    )
    args = parser.parse_args()
    print(describe(machine()))
    for mode in args.modes.split(","):
        run(mode, args.rows, args.every, spatial=not args.arrival_order)


if __name__ == "__main__":
    main()
