"""Load generator: processes x threads posting pre-encoded batches to POST /api/pings.

Bodies are built once before the clock starts (random positions over Lagos, ``ts``
omitted so the server stamps "now" and every ping is live), so the generator spends its
CPU on HTTP only: it shares the machine's cores with the pipeline it measures. With a
``rate`` each thread paces its batches on a fixed schedule; without, it posts as fast
as the server answers (keep-alive connections, one request in flight per thread).
"""

from __future__ import annotations

import http.client
import math
import multiprocessing as mp
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec

LAGOS = (3.10, 6.40, 3.70, 6.70)  # west, south, east, north
BODIES_PER_THREAD = 8
STEPS = 8  # a driver's positions cycle through this many steps
STEP_DEG = 0.0005  # ~55 m: 30 km/h for ~7 s


def build_bodies(
    count: int, batch: int, drivers: int, seed: int, bbox: tuple[float, ...] = LAGOS
) -> list[bytes]:
    """``count`` bodies of ``batch`` pings. Drivers move like the simulator's do, not
    teleport: driver n sits at a fixed spot of its own (the same in every thread and
    process) and body k puts it k steps of ~55 m along its own heading, so consecutive
    pings of a driver mostly change only its geohash-7/8 cell, as real 5-10 s pings do.
    (Random positions per ping would change all 8 precisions per ping, the worst case
    for the live counters.)"""
    rnd = random.Random(seed)
    west, south, east, north = bbox
    bodies = []
    cursor = rnd.randrange(drivers)
    for k in range(count):
        pings = []
        for _ in range(batch):
            n = cursor % drivers
            spot = random.Random(n)
            lat0 = south + spot.random() * (north - south)
            lon0 = west + spot.random() * (east - west)
            heading = spot.random() * 2 * math.pi
            step = (k + (cursor // drivers)) % STEPS
            pings.append(
                {
                    "driver_id": f"drv-{n:06d}",
                    "lat": round(
                        min(north, max(south, lat0 + math.cos(heading) * STEP_DEG * step)), 6
                    ),
                    "lon": round(
                        min(east, max(west, lon0 + math.sin(heading) * STEP_DEG * step)), 6
                    ),
                    "speed_kmh": 30.5,
                    "heading": round(math.degrees(heading), 1) % 360,
                }
            )
            cursor += 1
        bodies.append(msgspec.json.encode(pings))
    return bodies


@dataclass(frozen=True)
class LoadSpec:
    port: int
    token: str
    processes: int = 2
    threads: int = 2
    batch: int = 5_000
    drivers: int = 20_000
    rate: float | None = None  # pings/s for the whole generator; None = as fast as possible


def _thread(
    spec: LoadSpec,
    bodies: list[bytes],
    stop: Any,
    accepted: Any,
    errors: Any,
    per_thread_rate: float | None,
    phase: float,
) -> None:
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=60)
    interval = spec.batch / per_thread_rate if per_thread_rate else 0.0
    next_at = time.monotonic() + phase * interval
    i = 0
    while not stop.is_set():
        if interval:
            wait = next_at - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            next_at += interval
        try:
            conn.request("POST", "/api/pings", bodies[i % len(bodies)], headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status == 202:
                with accepted.get_lock():
                    accepted.value += msgspec.json.decode(payload)["accepted"]
            else:
                with errors.get_lock():
                    errors.value += 1
        except (OSError, http.client.HTTPException):
            with errors.get_lock():
                errors.value += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=60)
            stop.wait(0.1)
        i += 1
    conn.close()


def _process(spec: LoadSpec, index: int, stop: Any, ready: Any, accepted: Any, errors: Any) -> None:
    threads = []
    per_thread = spec.rate / (spec.processes * spec.threads) if spec.rate else None
    for t in range(spec.threads):
        n = index * spec.threads + t
        bodies = build_bodies(BODIES_PER_THREAD, spec.batch, spec.drivers, seed=1000 + n)
        phase = n / (spec.processes * spec.threads)  # spread paced threads over the interval
        threads.append(
            threading.Thread(
                target=_thread,
                args=(spec, bodies, stop, accepted, errors, per_thread, phase),
                daemon=True,
            )
        )
    for th in threads:
        th.start()
    ready.release()
    for th in threads:
        th.join()


class LoadGenerator:
    """``start()`` returns once every process has built its bodies and begun posting."""

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Semaphore(0)
        self._accepted = ctx.Value("q", 0)
        self._errors = ctx.Value("q", 0)
        self._procs = [
            ctx.Process(
                target=_process,
                args=(spec, i, self._stop, self._ready, self._accepted, self._errors),
                daemon=True,
            )
            for i in range(spec.processes)
        ]

    @property
    def accepted(self) -> int:
        return int(self._accepted.value)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    @property
    def errors(self) -> int:
        return int(self._errors.value)

    def start(self) -> LoadGenerator:
        for p in self._procs:
            p.start()
        for _ in self._procs:
            if not self._ready.acquire(timeout=120):
                self.stop()
                raise TimeoutError("the load generator did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
