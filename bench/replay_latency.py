"""Replay latency on a generated history: frame at random t, seek over the socket,
peaks and timeline over the whole range.

    .venv/bin/python bench/replay_latency.py                 # 1 day, 1,000 drivers
    .venv/bin/python bench/replay_latency.py --drivers 3500  # ~10M pings in the day
    .venv/bin/python bench/replay_latency.py --week          # 7 days (slow to load)

History comes from the Lagos simulator (``Fleet``/``iter_backfill``, one ping per
online driver every 10 s) and is written the way the sink writes it: binary COPY and
the rollups in one transaction per 20,000 pings, into a scratch database created here
and dropped at the end. Prints the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import websocket
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app
from app.auth import mint_token
from app.copy_rows import COPY_SQL, encode_copy
from app.settings import load_settings
from app.simulate import Fleet, iter_backfill
from bench.machine import machine
from bench.stack import scratch_database
from replay.heat import View, iso_ms, parse_bbox
from replay.history import replay_frame
from replay.peak_hours import peaks
from replay.rollups import write_rollups
from replay.timeline import timeline

START = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday, midnight UTC
LAGOS_CORE = "3.30,6.42,3.42,6.62"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt(values: list[float]) -> str:
    return (
        f"p50 {statistics.median(values):6.1f} ms  p95 {pct(values, 0.95):6.1f} ms  "
        f"max {max(values):6.1f} ms  (n={len(values)})"
    )


def load(conn: psycopg.Connection, drivers: int, days: int) -> tuple[int, float]:
    for d in range(days + 1):
        conn.execute("SELECT heatreplay_ensure_day_partition(%s)", ((START + timedelta(d)).date(),))
    conn.commit()
    fleet = Fleet(drivers, seed=4, start=START)
    rows = 0
    started = time.perf_counter()
    for batch in iter_backfill(fleet, START, START + timedelta(days=days), 10.0, max_batch=20_000):
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(COPY_SQL) as copy:
                copy.write(encode_copy(batch))  # type: ignore[arg-type]
            write_rollups(cur, batch)  # type: ignore[arg-type]
        rows += len(batch)
        if rows % 1_000_000 < 20_000:
            print(f"  loaded {rows:,} pings ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows, time.perf_counter() - started


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t) * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drivers", type=int, default=1000)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--week", action="store_true", help="7 days of history")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--seeks", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="do not drop the scratch database")
    args = ap.parse_args()
    days = 7 if args.week else args.days

    base = load_settings(dotenv=None).with_(
        redis_prefix=f"bench{uuid.uuid4().hex[:6]}",
        ws_max_messages_per_s=10_000.0,  # seeks back to back: measure them, not the limit
    )
    with scratch_database(base, "hr_bench", keep=args.keep) as settings:
        url = settings.database_url
        with psycopg.connect(url) as conn:
            print(f"loading {days} day(s), {args.drivers} drivers ...", flush=True)
            rows, load_s = load(conn, args.drivers, days)
            conn.commit()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            measure(conn, settings, rows, load_s, days, args)


def measure(conn, settings, rows, load_s, days, args) -> None:  # type: ignore[no-untyped-def]
    window = settings.live_window_ms
    lo = int(START.timestamp() * 1000)
    hi = lo + days * 86_400_000
    rng = random.Random(1)
    size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    try:
        print(f"\nmachine: {json.dumps(machine())}")
    except Exception as exc:  # the shared probe failing must not lose a loaded history
        print(
            f"\nmachine: {os.cpu_count()} cores, {platform.platform()}, Python "
            f"{platform.python_version()}, PostgreSQL "
            f"{conn.execute('SHOW server_version').fetchone()[0]} (probe failed: {exc})"
        )
    print(
        f"history: {days} day(s), {args.drivers} drivers, {rows:,} pings "
        f"({rows / load_s:,.0f}/s loaded with rollups), database {size[0]}, W = {window} ms"
    )
    views = {
        "geohash-6, all Lagos": View(6),
        "geohash-7, core bbox": View(7, parse_bbox(LAGOS_CORE)),
        "geohash-5, all Lagos": View(5),
    }
    for label, view in views.items():
        times = []
        for _ in range(args.frames):
            t = rng.randrange(lo, hi)
            ms, frame = timed(replay_frame, conn, view, t, window)
            times.append(ms)
        print(f"frame at random t, {label:22s}: {fmt(times)}  last: {len(frame['cells'])} cells")
    # an evening rush frame (18:30 Lagos = 17:30 UTC): the busiest window of the day
    rush = [lo + 17 * 3600_000 + 1800_000 + rng.randrange(3600_000) for _ in range(args.frames)]
    times = [timed(replay_frame, conn, View(6), t, window)[0] for t in rush]
    print(f"frame in the evening rush, geohash-6      : {fmt(times)}")

    t_peaks, found = timed(peaks, conn, lo, hi, 3600, 3)
    print(f"peaks over the range (window 1 h, top 3): {t_peaks:.1f} ms -> {json.dumps(found)}")
    for step in (60, 120, 3600):
        t_tl, tl = timed(timeline, conn, lo, hi, step)
        print(
            f"timeline over the range, step {step:>4} s: {t_tl:6.1f} ms "
            f"({len(tl['points'])} points)"
        )
    seeks(settings, lo, hi, rng, args.seeks)


def seeks(settings, lo, hi, rng, n) -> None:  # type: ignore[no-untyped-def]
    """Seek over a real socket: time from sending {"op":"seek"} to receiving its frame."""
    app = create_app(settings)
    port = _free_port()
    srv = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    token = mint_token(settings, "viewer")
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/ws/replay?from={lo}&to={hi}&precision=6&token={token}",
        timeout=30,
        # as browsers do: without it Nagle + delayed ACK add ~40 ms to each round trip
        sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
    try:
        ws.recv()  # first frame
        ws.send(json.dumps({"op": "pause"}))
        _until(ws, "state")
        times = []
        for _ in range(n):
            t = rng.randrange(lo, hi)
            started = time.perf_counter()
            ws.send(json.dumps({"op": "seek", "t": t}))
            frame = _until(ws, "frame")
            times.append((time.perf_counter() - started) * 1000)
            assert frame["t"] == iso_ms(t), frame["t"]
        print(f"seek over the socket (send -> frame), geohash-6: {fmt(times)}")
    finally:
        ws.close()
        srv.shutdown()
        app.extensions["heatreplay"].close()


def _until(ws, kind: str):  # type: ignore[no-untyped-def]
    while True:
        msg = json.loads(ws.recv())
        if msg["type"] == "error":
            raise RuntimeError(f"server error: {msg}")
        if msg["type"] == kind:
            return msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
