"""Live counter cost: one Lua call per batch, measured alone against the real Redis.

`python -m bench.live_apply [--drivers 20000] [--batches 20]`: batches of one ping per
driver, each driver moving ~55 m per ping (a new geohash-8 cell most pings), so every
batch moves counters at several precisions. Prints pings/s and Redis CPU per ping.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Iterator

import redis

from app.live_counts import LiveCounts
from app.ping import Ping
from app.settings import load_settings
from bench.machine import describe, machine


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def moving_fleet(drivers: int, batches: int, t0: int) -> Iterator[tuple[int, list[Ping]]]:
    """(now_ms, pings): a warm-up batch placing every driver, then ``batches`` batches of
    one ping per driver, each ~55 m further north (a new geohash-8 cell most pings, a new
    geohash-6 cell every ~11 batches). The same fleet for every run (seeded)."""
    rng = random.Random(7)
    pos = [(6.4 + rng.random() * 0.3, 3.2 + rng.random() * 0.4) for _ in range(drivers)]
    yield t0, [Ping(f"d{i}", *pos[i], t0) for i in range(drivers)]
    for b in range(1, batches + 1):
        pings = []
        for i in range(drivers):
            lat, lon = pos[i]
            pos[i] = (lat + 0.0005, lon)
            pings.append(Ping(f"d{i}", lat + 0.0005, lon, t0 + b * 1000, 30.0, 0.0))
        yield t0 + b * 1000, pings


def run(drivers: int, batches: int) -> dict[str, float]:
    settings = load_settings(
        {"HEATREPLAY_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:8]}", "LIVE_WINDOW_S": "3600"},
        dotenv=None,
    )
    client = redis.Redis.from_url(settings.redis_url)
    live = LiveCounts(client, settings)
    fleet = moving_fleet(drivers, batches, int(time.time() * 1000))
    try:
        warm_at, warm = next(fleet)
        live.apply(warm, warm_at)  # warm
        elapsed = cpu = 0.0
        for now, pings in fleet:
            c0, t0 = redis_cpu(client), time.perf_counter()
            live.apply(pings, now)
            elapsed += time.perf_counter() - t0
            cpu += redis_cpu(client) - c0
        total = drivers * batches
        return {"pings_per_s": total / elapsed, "redis_cpu_us_per_ping": cpu / total * 1e6}
    finally:
        live.wipe()
        for key in client.scan_iter(
            match=settings.redis_key_prefix.replace("{", "\\{").replace("}", "\\}") + "*"
        ):
            client.delete(key)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drivers", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print(describe(machine()))
    figures = run(args.drivers, args.batches)
    print(
        f"live apply: {figures['pings_per_s']:,.0f} pings/s, "
        f"Redis CPU {figures['redis_cpu_us_per_ping']:.1f} us/ping "
        f"({args.drivers} drivers per batch, {args.batches} batches)"
    )


if __name__ == "__main__":
    main()
