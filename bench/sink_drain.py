"""The sink alone: how fast it writes a backlog from Kafka into PostGIS.

`python -m bench.sink_drain [--pings 1000000] [--pings-per-message 1,500] [--code PATH]`:
fills the topic with ``pings`` pings (20,000 drivers moving along their own tracks, every
ping at its own point, as the e2e load generator sends them) before the sink starts,
then starts `heatreplay sink` and times it from its first row to the last. Prints
rows/s and CPU microseconds per row of the sink and of PostgreSQL (every backend of the
bench's database). Nothing else runs: no web, no live worker, no load.

``--code PATH`` runs the sink from another checkout (``git worktree add /tmp/old
<commit>``), so two commits can be compared in the same minutes: on these shared
machines the same work takes 30-40 % longer from one half-hour to the next, and e2e
runs far apart cannot tell a 10 % change from the machine's drift.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path
from typing import Any

from app.kafka_io import PingProducer
from app.ping import Ping
from bench.load import LAGOS, NOISE_DEG, STEPS, _tracks
from bench.machine import describe, machine
from bench.stack import ROOT, Stack, cpu_seconds

DRIVERS = 20_000
CHUNK = 5_000  # pings per produce call, as one web request of the e2e bench


def backlog(count: int, seed: int = 7) -> list[Ping]:
    """``count`` pings of ``DRIVERS`` drivers in turn, each a step further along its track
    every round, with GPS noise; one second apart per round, ending now."""
    rnd = random.Random(seed)
    tracks = _tracks(DRIVERS, LAGOS)
    rounds = math.ceil(count / DRIVERS)
    now = int(time.time() * 1000)
    out = []
    for k in range(count):
        n, r = k % DRIVERS, k // DRIVERS
        lat0, lon0, dlat, dlon, degrees = tracks[n]
        step = r % STEPS
        lat = lat0 + dlat * step + (rnd.random() - 0.5) * NOISE_DEG
        lon = lon0 + dlon * step + (rnd.random() - 0.5) * NOISE_DEG
        ts = now - (rounds - r) * 1000 + n // 100
        out.append(Ping(f"drv-{n:06d}", round(lat, 6), round(lon, 6), ts, 30.5, degrees))
    return out


def run(
    pings: int,
    per: int,
    code: Path = ROOT,
    progress: bool = True,
    batch_max: int | None = None,
) -> dict[str, Any]:
    """The figures of one drain; the clock starts at the first row written, so the
    group join is not in it (nor the first batch: ``batch_max`` keeps it small)."""
    data = backlog(pings)
    overrides: dict[str, Any] = {"kafka_pings_per_message": per}
    if batch_max is not None:
        overrides["sink_batch_max"] = batch_max
    with Stack("sinkdrain", processes=(), root=code, **overrides) as stack:
        producer = PingProducer(stack.settings)
        for start in range(0, pings, CHUNK):
            producer.send_pings(data[start : start + CHUNK])
            if progress and (start // CHUNK) % 40 == 39:
                print(f"  backlog {start + CHUNK:,} / {pings:,} pings", flush=True)
        producer.close()
        del data
        stack.spawn("sink")

        def rows() -> float:
            stack.check_alive()
            return stack.stats().get("sink_rows", 0)

        while (first := rows()) == 0:
            time.sleep(0.05)
        t0 = time.monotonic()
        sink_pid = stack.procs["sink"].pid
        cpu0 = (cpu_seconds(sink_pid), sum(cpu_seconds(p) for p in stack.postgres_pids()))
        deadline = t0 + 600
        while (done := rows()) < pings and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu1 = (cpu_seconds(sink_pid), sum(cpu_seconds(p) for p in stack.postgres_pids()))
        measured = max(1.0, done - first)
        return {
            "pings": pings,
            "pings_per_message": per,
            "code": str(code),
            "rows_written": int(done),
            "rows_per_s": round(measured / elapsed),
            "sink_us_per_row": round((cpu1[0] - cpu0[0]) / measured * 1e6, 2),
            "postgres_us_per_row": round((cpu1[1] - cpu0[1]) / measured * 1e6, 2),
            "sink_percent_of_a_core": round((cpu1[0] - cpu0[0]) / elapsed * 100),
            "postgres_percent_of_a_core": round((cpu1[1] - cpu0[1]) / elapsed * 100),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pings", type=int, default=1_000_000)
    parser.add_argument(
        "--pings-per-message", default="1", help="comma-separated, e.g. 1,500 (SPEC: 1)"
    )
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout the sink runs from")
    args = parser.parse_args()
    print(describe(machine()))
    for per in (int(x) for x in args.pings_per_message.split(",")):
        f = run(args.pings, per, args.code)
        print(
            f"sink drain, {f['pings']:,} pings, {per} per message, code {f['code']}: "
            f"{f['rows_per_s']:,} rows/s; CPU us per row sink {f['sink_us_per_row']}, "
            f"PostgreSQL {f['postgres_us_per_row']}; % of a core sink "
            f"{f['sink_percent_of_a_core']}, PostgreSQL {f['postgres_percent_of_a_core']}"
            + ("" if f["rows_written"] >= f["pings"] else f" (only {f['rows_written']:,} rows)"),
            flush=True,
        )


if __name__ == "__main__":
    main()
