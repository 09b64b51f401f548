"""5. Memory: RSS of the web workers, live worker, sink and broker before, during and
after a soak at a steady load (a few live sockets open), and the live state's Redis
memory against the number of drivers in the window and against the length of history.

Redis memory is the sum of ``MEMORY USAGE`` (exact, SAMPLES 0) over this stack's live
keys only, so other clients of the same Redis server do not blur it.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from typing import Any

import msgspec
import requests
import websocket

from app.live_counts import COUNTED
from bench.load import LAGOS, LoadGenerator, LoadSpec, build_bodies
from bench.stack import Stack, wait_for


def live_key_bytes(stack: Stack) -> int:
    prefix = stack.settings.redis_key_prefix
    keys = [f"{prefix}{k}" for k in ("drv", "seen", "cutoff")]
    keys += [f"{prefix}c:{p}" for p in COUNTED]
    total = 0
    for key in keys:
        used = stack.redis.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


def drivers_in_window(stack: Stack) -> int:
    return int(stack.redis.hlen(f"{stack.settings.redis_key_prefix}drv"))


def _post_round(
    stack: Stack, session: requests.Session, drivers: int, prefix: str, seed: int
) -> None:
    """One ping for each of ``drivers`` drivers named ``prefix``-n (ts = now)."""
    for start in range(0, drivers, 5_000):
        body = build_bodies(1, min(5_000, drivers - start), drivers, seed=seed + start, bbox=LAGOS)[
            0
        ]
        pings = msgspec.json.decode(body)
        for i, p in enumerate(pings):
            p["driver_id"] = f"{prefix}-{start + i:06d}"
        r = session.post(stack.http + "/api/pings", data=msgspec.json.encode(pings), timeout=60)
        r.raise_for_status()


def _caught_up(stack: Stack) -> None:
    def done() -> bool:
        s = stack.stats()
        return s.get("live_pings", 0) >= s.get("pings_accepted", 0)

    wait_for(done, 60, "the live worker to catch up", interval=0.1)


def redis_vs_drivers(
    stack: Stack, driver_counts: tuple[int, ...], rounds: int, window_s: float
) -> dict[str, Any]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.token('ingest')}"
    session.headers["Content-Type"] = "application/json"
    viewer = {"Authorization": f"Bearer {stack.token('viewer')}"}
    by_drivers = []
    for n, drivers in enumerate(driver_counts):
        # the previous drivers leave the window; a reader's call expires them
        time.sleep(window_s + 0.5)
        requests.get(stack.http + "/api/live?precision=1", headers=viewer, timeout=30)
        per_round = []
        for r in range(rounds):
            _post_round(stack, session, drivers, f"mem{n}", seed=100 * n + r)
            _caught_up(stack)
            per_round.append(live_key_bytes(stack))
        with stack.connect() as conn:
            history = conn.execute("SELECT count(*) FROM pings").fetchone()
        by_drivers.append(
            {
                "drivers": drivers,
                "drivers_in_window": drivers_in_window(stack),
                "history_pings": int(history[0]) if history else 0,
                "redis_live_bytes_per_round": per_round,
                "bytes_per_driver": round(per_round[-1] / drivers),
            }
        )
    time.sleep(window_s + 0.5)
    requests.get(stack.http + "/api/live?precision=1", headers=viewer, timeout=30)
    return {
        "window_s": window_s,
        "rounds": f"{rounds} rounds of one ping per driver (history grows, drivers do not)",
        "by_drivers": by_drivers,
        "redis_live_bytes_after_all_left": live_key_bytes(stack),
    }


class Viewers:
    def __init__(self, stack: Stack, n: int):
        token = stack.token("viewer")
        west, south, east, north = LAGOS
        self.stop = threading.Event()
        self.sockets = [
            websocket.create_connection(
                f"{stack.ws}/ws/live?precision=6&bbox={west},{south},{east},{north}&token={token}",
                timeout=10,
                skip_utf8_validation=True,
            )
            for _ in range(n)
        ]
        for ws in self.sockets:
            ws.settimeout(None)  # a timeout mid-frame would break websocket-client's framing
        self.frames = 0
        self.threads = [
            threading.Thread(target=self._recv, args=(s,), daemon=True) for s in self.sockets
        ]
        for t in self.threads:
            t.start()

    def _recv(self, ws: websocket.WebSocket) -> None:
        while not self.stop.is_set():
            try:
                ws.recv()
                self.frames += 1
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return

    def close(self) -> None:
        self.stop.set()
        for ws in self.sockets:
            with contextlib.suppress(websocket.WebSocketException, OSError):
                ws.abort()
                ws.close(timeout=0)
        for t in self.threads:
            t.join(3)


def run(
    soak_s: float = 60.0,
    rate: float = 10_000,
    sockets: int = 20,
    driver_counts: tuple[int, ...] = (1_000, 10_000, 50_000),
    rounds: int = 3,
    window_s: float = 10.0,
    sample_s: float = 5.0,
) -> dict[str, Any]:
    with Stack("memory", live_window_s=window_s, web_workers=2, web_threads=64) as stack:
        stack.wait_pipeline_ready()
        redis_figures = redis_vs_drivers(stack, driver_counts, rounds, window_s)
        spec = LoadSpec(
            port=stack.settings.web_port,
            token=stack.token("ingest"),
            processes=1,
            threads=2,
            batch=5_000,
            drivers=20_000,
            rate=rate,
        )
        before = stack.rss_mib()
        viewers = Viewers(stack, sockets)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        a0 = stack.stats().get("pings_accepted", 0.0)
        try:
            with LoadGenerator(spec):
                while (elapsed := time.monotonic() - t0) < soak_s:
                    time.sleep(min(sample_s, max(0.1, soak_s - elapsed)))
                    samples.append({"t": round(time.monotonic() - t0, 1), **stack.rss_mib()})
                    stack.check_alive()
        finally:
            viewers.close()
        accepted = stack.stats().get("pings_accepted", 0.0) - a0
        _caught_up(stack)
        after = stack.rss_mib()
        redis_after_soak = live_key_bytes(stack)
    names = list(before)
    return {
        "soak": {
            "seconds": round(time.monotonic() - t0, 1) if not samples else samples[-1]["t"],
            "target_pings_per_s": rate,
            "accepted_pings": int(accepted),
            "live_sockets": sockets,
            "frames_received": viewers.frames,
        },
        "rss_mib_before": before,
        "rss_mib_after": after,
        "rss_mib_max": {n: max([s[n] for s in samples] or [after[n]]) for n in names},
        "rss_mib_growth_second_half": {
            n: round(samples[-1][n] - samples[len(samples) // 2][n], 1) if len(samples) > 1 else 0.0
            for n in names
        },
        "rss_timeline": samples,
        "redis": {**redis_figures, "redis_live_bytes_after_soak": redis_after_soak},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--soak", type=float, default=60.0, help="seconds (the issue: 600)")
    parser.add_argument("--rate", type=float, default=10_000, help="pings/s during the soak")
    parser.add_argument("--drivers", default="1000,10000,50000", help="driver counts for Redis")


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        soak_s=args.soak,
        rate=args.rate,
        driver_counts=tuple(int(x) for x in args.drivers.split(",")),
    )
