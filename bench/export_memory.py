"""Peak RSS of the web server while it streams /api/analytics/export, against rows exported.

Loads ``--rows`` synthetic pings (one UTC day, Lagos) into a scratch database, starts the
product's server (gunicorn gthread, one worker) on a free port, exports growing time
ranges as CSV and GeoJSON through a streaming HTTP client, and samples the worker's
VmRSS from /proc every 20 ms. Constant memory shows as a flat peak whatever the rows.

    .venv/bin/python -m bench.export_memory                 # 1M rows (the issue's size)
    .venv/bin/python -m bench.export_memory --rows 200000   # quicker

Needs PostgreSQL + PostGIS (DATABASE_URL or 127.0.0.1:5432, user postgres).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402

from app.auth import mint_token  # noqa: E402
from app.copy_rows import COPY_SQL, encode_copy  # noqa: E402
from app.ping import Ping  # noqa: E402
from app.settings import load_settings  # noqa: E402
from bench.stack import free_port, rss_kib, scratch_database  # noqa: E402

T0 = 1_795_132_800_000  # 2026-11-20T00:00:00Z
STEP_MS = 50  # one ping every 50 ms: 1M pings span ~13.9 h of one day
BBOX = "3.0,6.3,4.2,6.8"
GUNICORN = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "4"]
GUNICORN += ["--log-level", "warning"]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def load(url: str, rows: int) -> None:
    rnd = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-20')")
        for start in range(0, rows, 100_000):
            batch = [
                Ping(
                    f"drv-{i % 1000:04d}",
                    6.3 + rnd.random() * 0.5,
                    3.0 + rnd.random() * 1.2,
                    T0 + i * STEP_MS,
                    speed_kmh=30.0,
                    heading=90.0,
                )
                for i in range(start, min(rows, start + 100_000))
            ]
            with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(encode_copy(batch))
        conn.execute("ANALYZE pings")


class Sampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)


def export(port: int, token: str, fmt: str, rows: int, worker: int) -> tuple[int, int, float, int]:
    params = {"format": fmt, "bbox": BBOX, "from": T0, "to": T0 + rows * STEP_MS}
    sampler = Sampler(worker)
    sampler.start()
    started = time.perf_counter()
    size = lines = 0
    with requests.get(
        f"http://127.0.0.1:{port}/api/analytics/export",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        stream=True,
        timeout=600,
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    return lines, size, elapsed, sampler.peak


def machine(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version(), postgis_lib_version()").fetchone()
    assert row is not None
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return (
        f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB RAM, "
        f"Python {platform.python_version()}, {row[0].split(',')[0]}, PostGIS {row[1]}, "
        f"psycopg {psycopg.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    base = load_settings({"HEATREPLAY_ENV": "test", **os.environ}, dotenv=None)
    with scratch_database(base.with_(export_max_rows=args.rows), "hr_bench_export") as settings:
        url = settings.database_url
        server = None
        try:
            started = time.perf_counter()
            load(url, args.rows)
            print(f"machine: {machine(url)}")
            print(f"loaded {args.rows} pings in {time.perf_counter() - started:.1f} s")
            port = free_port()
            env = {
                **os.environ,
                "HEATREPLAY_ENV": "test",
                "DATABASE_URL": url,
                "EXPORT_MAX_ROWS": str(args.rows),
                "HEATREPLAY_SECRET": settings.secret,
            }
            server = subprocess.Popen(
                [*GUNICORN, "-b", f"127.0.0.1:{port}", "app.wsgi:app"],
                cwd=ROOT,
                env=env,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    time.sleep(0.2)
                except requests.RequestException:
                    break  # up, but slow to report on the other services
            worker = children(server.pid)[0]
            token = mint_token(settings, "viewer")
            export(port, token, "csv", 1000, worker)  # warm: imports, pool, first plans
            print(f"worker RSS after warm-up: {rss_kib(worker) / 1024:.1f} MiB")
            header = f"{'format':8} {'rows':>9} {'MiB out':>8} {'s':>6} {'rows/s':>9}"
            print(f"{header} {'peak RSS MiB':>13}")
            sizes = sorted({min(args.rows, n) for n in (10_000, 100_000, args.rows)})
            for fmt in ("csv", "geojson"):
                for rows in sizes:
                    lines, size, elapsed, peak = export(port, token, fmt, rows, worker)
                    print(
                        f"{fmt:8} {rows:>9} {size / 2**20:>8.1f} {elapsed:>6.2f} "
                        f"{rows / elapsed:>9.0f} {peak / 1024:>13.1f}"
                    )
                    assert lines >= rows, (fmt, rows, lines)
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    main()
