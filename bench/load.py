"""Load generator: processes x threads posting pre-encoded batches to POST /api/pings.

Bodies are built once before the clock starts (random positions over Lagos, ``ts``
omitted so the server stamps "now" and every ping is live), so the generator spends its
CPU on HTTP only: it shares the machine's cores with the pipeline it measures. With a
``rate`` each thread paces its batches on a fixed schedule; without, it posts as fast
as the server answers (keep-alive connections, one request in flight per thread).
"""

from __future__ import annotations

import functools
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
MAX_BODIES_PER_THREAD = 100  # 100 x 5,000 pings: ~45 MB of bodies per thread
STEPS = 8  # a driver's positions cycle through this many steps
STEP_DEG = 0.0005  # ~55 m: 30 km/h for ~7 s
NOISE_DEG = 0.00006  # positions jitter by up to +-0.00003 deg (~3 m), like GPS fixes


@functools.lru_cache(maxsize=4)
def _tracks(
    drivers: int, bbox: tuple[float, ...]
) -> list[tuple[float, float, float, float, float]]:
    """Each driver's fixed spot, step (d lat, d lon of ~55 m) and heading in degrees."""
    west, south, east, north = bbox
    out = []
    for n in range(drivers):
        spot = random.Random(n)
        lat0 = south + spot.random() * (north - south)
        lon0 = west + spot.random() * (east - west)
        heading = spot.random() * 2 * math.pi
        dlat, dlon = math.cos(heading) * STEP_DEG, math.sin(heading) * STEP_DEG
        out.append((lat0, lon0, dlat, dlon, round(math.degrees(heading), 1) % 360))
    return out


def build_bodies(
    count: int, batch: int, drivers: int, seed: int, bbox: tuple[float, ...] = LAGOS
) -> list[bytes]:
    """``count`` bodies of ``batch`` pings. Drivers move like the simulator's do, not
    teleport: driver n sits at a fixed spot of its own (the same in every thread and
    process) and body k puts it k steps of ~55 m along its own heading, so consecutive
    pings of a driver mostly change only its geohash-7/8 cell, as real 5-10 s pings do.
    (Random positions per ping would change all 8 precisions per ping, the worst case
    for the live counters.) Every position carries GPS noise of up to ~3 m drawn from
    ``seed``, so no two pings share a point, as with a real fleet: repeated points are
    cheaper for the spatial index (docs/performance.md, ninth round)."""
    rnd = random.Random(seed)
    noise = rnd.random
    west, south, east, north = bbox
    tracks = _tracks(drivers, bbox)
    bodies = []
    cursor = rnd.randrange(drivers)
    for k in range(count):
        pings = []
        for _ in range(batch):
            n = cursor % drivers
            lat0, lon0, dlat, dlon, degrees = tracks[n]
            step = (k + (cursor // drivers)) % STEPS
            lat = lat0 + dlat * step + (noise() - 0.5) * NOISE_DEG
            lon = lon0 + dlon * step + (noise() - 0.5) * NOISE_DEG
            pings.append(
                {
                    "driver_id": f"drv-{n:06d}",
                    "lat": round(min(north, max(south, lat)), 6),
                    "lon": round(min(east, max(west, lon)), 6),
                    "speed_kmh": 30.5,
                    "heading": degrees,
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
    seed: int = 0  # phases of one run with different seeds post different positions
    distinct_s: float = 0.0  # build enough bodies that this many seconds repeat none

    def bodies_per_thread(self) -> int:
        """Bodies each thread cycles through: enough for ``distinct_s`` seconds of its
        share of ``rate`` (unpaced: the cap), at least ``BODIES_PER_THREAD``."""
        if not self.distinct_s:
            return BODIES_PER_THREAD
        if not self.rate:
            return MAX_BODIES_PER_THREAD
        per_thread = self.rate * self.distinct_s / (self.processes * self.threads * self.batch)
        return max(BODIES_PER_THREAD, min(MAX_BODIES_PER_THREAD, math.ceil(per_thread) + 1))


def _thread(
    spec: LoadSpec,
    bodies: list[bytes],
    go: Any,
    stop: Any,
    accepted: Any,
    errors: Any,
    per_thread_rate: float | None,
    phase: float,
) -> None:
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=60)
    interval = spec.batch / per_thread_rate if per_thread_rate else 0.0
    go.wait()  # no request before every process is ready and the caller said go
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


def _process(
    spec: LoadSpec, index: int, go: Any, stop: Any, ready: Any, accepted: Any, errors: Any
) -> None:
    threads = []
    per_thread = spec.rate / (spec.processes * spec.threads) if spec.rate else None
    for t in range(spec.threads):
        n = index * spec.threads + t
        bodies = build_bodies(
            spec.bodies_per_thread(), spec.batch, spec.drivers, seed=1000 + n + 7919 * spec.seed
        )
        phase = n / (spec.processes * spec.threads)  # spread paced threads over the interval
        threads.append(
            threading.Thread(
                target=_thread,
                args=(spec, bodies, go, stop, accepted, errors, per_thread, phase),
                daemon=True,
            )
        )
    for th in threads:
        th.start()
    ready.release()
    for th in threads:
        th.join()


class LoadGenerator:
    """``start()`` returns once every process has built its bodies and begun posting.

    ``launch()`` and ``go()`` are its two halves: between them every process is ready and
    nothing has been posted, so a caller can read its baselines (the e2e bench read its
    counters after ``start()``, and a request that landed first was counted by the
    consumers but sat in the accepted baseline)."""

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        ctx = mp.get_context("spawn")
        self._go = ctx.Event()
        self._stop = ctx.Event()
        self._ready = ctx.Semaphore(0)
        self._accepted = ctx.Value("q", 0)
        self._errors = ctx.Value("q", 0)
        self._procs = [
            ctx.Process(
                target=_process,
                args=(spec, i, self._go, self._stop, self._ready, self._accepted, self._errors),
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
        return self.launch().go()

    def launch(self) -> LoadGenerator:
        """Start the processes and wait until each has built its bodies."""
        for p in self._procs:
            p.start()
        for _ in self._procs:
            if not self._ready.acquire(timeout=120):
                self.stop()
                raise TimeoutError("the load generator did not start")
        return self

    def go(self) -> LoadGenerator:
        """Every thread begins posting."""
        self._go.set()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._go.set()  # threads still waiting for it see stop and end
        for p in self._procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
