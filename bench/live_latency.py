"""2. Live latency: a ping accepted by POST /api/pings -> the first live frame on a socket
that contains it, at a stated background load.

About once a second a new probe driver pings from a new geohash-7 cell far from the
background load (which covers Lagos); a viewer socket watches the probes' area, and the
latency of a probe is the time from the 202 for it (and from sending it) to the first
frame whose cells hold its cell. The live hub sends at most LIVE_FPS frames a second,
so up to 1/LIVE_FPS of the figure is that pacing, by design.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import threading
import time
from datetime import datetime
from typing import Any

import geohash
import requests
import websocket

from bench.load import LoadGenerator, LoadSpec
from bench.stack import Stack

PRECISION = 7
PROBE_AREA = (1.0, 1.0, 2.0, 2.0)  # west, south, east, north: open sea, no background pings
_CELL = re.compile(rb'\["([0-9a-z]+)",')
_T = re.compile(rb'"t":"([^"]+)"')


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class FrameWatcher(threading.Thread):
    """Receives frames on one socket and notes when each awaited cell first shows up."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(url, timeout=5, skip_utf8_validation=True)
        self.ws.settimeout(None)  # a timeout mid-frame would break websocket-client's framing
        self.awaited: dict[str, float] = {}  # cell -> when it was awaited from
        self.seen: dict[str, float] = {}  # cell -> when a frame first held it
        self.seen_wall: dict[str, float] = {}  # the same, wall clock (s)
        self.frame_t: dict[str, float] = {}  # that frame's t: when the hub read the counts
        self.frames = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                return
            now, wall = time.monotonic(), time.time()
            data = raw.encode() if isinstance(raw, str) else raw
            self.frames += 1
            cells = set(m.decode() for m in _CELL.findall(data))
            with self.lock:
                for cell in [c for c in self.awaited if c in cells]:
                    self.seen[cell] = now
                    self.seen_wall[cell] = wall
                    if t := _T.search(data, 0, 200):
                        self.frame_t[cell] = _epoch_s(t.group(1).decode())
                    del self.awaited[cell]

    def expect(self, cell: str) -> None:
        with self.lock:
            self.awaited[cell] = time.monotonic()

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.ws.abort()
            self.ws.close(timeout=0)
        self.join(5)


def run(
    rate: float = 20_000,
    duration_s: float = 30.0,
    probe_every_s: float = 1.0,
    drivers: int = 20_000,
    batch: int = 1_000,
) -> dict[str, Any]:
    with Stack("latency", web_workers=2, web_threads=16) as stack:
        stack.wait_pipeline_ready()
        west, south, east, north = PROBE_AREA
        watcher = FrameWatcher(
            f"{stack.ws}/ws/live?precision={PRECISION}&bbox={west},{south},{east},{north}"
            f"&token={stack.token('viewer')}"
        )
        watcher.start()
        spec = LoadSpec(
            port=stack.settings.web_port,
            token=stack.token("ingest"),
            processes=1,
            threads=2,
            batch=batch,
            drivers=drivers,
            rate=rate or None,
        )
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.token('ingest')}"
        rnd = random.Random(7)
        probes: list[tuple[str, float, float]] = []  # cell, sent, accepted
        accepted_wall: dict[str, float] = {}
        used: set[str] = set()
        gen = LoadGenerator(spec).start() if rate else None
        a0 = stack.stats().get("pings_accepted", 0.0)
        t0 = time.monotonic()
        try:
            time.sleep(min(2.0, duration_s / 4))  # let the background load settle
            while time.monotonic() - t0 < duration_s:
                while True:
                    lat = south + 0.05 + rnd.random() * (north - south - 0.1)
                    lon = west + 0.05 + rnd.random() * (east - west - 0.1)
                    cell = geohash.encode(lat, lon, PRECISION)
                    if cell not in used:
                        used.add(cell)
                        break
                sent = time.monotonic()
                watcher.expect(cell)
                response = session.post(
                    stack.http + "/api/pings",
                    json={"driver_id": f"bench-probe-{len(used)}", "lat": lat, "lon": lon},
                    timeout=30,
                )
                accepted = time.monotonic()
                if response.status_code == 202:
                    probes.append((cell, sent, accepted))
                    accepted_wall[cell] = time.time()
                time.sleep(probe_every_s * (0.75 + rnd.random() / 2))
            time.sleep(2.0)  # the last probe's frame
        finally:
            load_s = time.monotonic() - t0
            if gen is not None:
                gen.stop()
            watcher.close()
        achieved = (stack.stats().get("pings_accepted", 0.0) - a0) / load_s
    from_accept = [(watcher.seen[c] - acc) * 1000 for c, _, acc in probes if c in watcher.seen]
    from_send = [(watcher.seen[c] - snt) * 1000 for c, snt, _ in probes if c in watcher.seen]
    # where the time goes: 202 -> the hub reading counts that hold the probe (the live
    # worker's batch and apply, then the hub's pacing), and that read -> the client
    # (building and sending the frame); the frame's t has millisecond resolution
    to_read = [(watcher.frame_t[c] - accepted_wall[c]) * 1000 for c in watcher.frame_t]
    to_client = [(watcher.seen_wall[c] - watcher.frame_t[c]) * 1000 for c in watcher.frame_t]
    return {
        "load": {
            "target_pings_per_s": rate,
            "achieved_pings_per_s": round(achieved),
            "batch": batch,
            "drivers": drivers,
            "live_fps": stack.settings.live_fps,
            "precision": PRECISION,
        },
        "probes": len(probes),
        "probes_seen": len(from_accept),
        "latency_ms_from_accepted_p50": round(percentile(from_accept, 50), 1),
        "latency_ms_from_accepted_p99": round(percentile(from_accept, 99), 1),
        "latency_ms_from_accepted_max": round(max(from_accept, default=float("nan")), 1),
        "latency_ms_from_sent_p50": round(percentile(from_send, 50), 1),
        "latency_ms_from_sent_p99": round(percentile(from_send, 99), 1),
        "accepted_to_hub_read_ms_p50": round(percentile(to_read, 50), 1),
        "accepted_to_hub_read_ms_p99": round(percentile(to_read, 99), 1),
        "hub_read_to_client_ms_p50": round(percentile(to_client, 50), 1),
        "hub_read_to_client_ms_p99": round(percentile(to_client, 99), 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=20_000, help="background pings/s")
    parser.add_argument("--duration", type=float, default=30.0)


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(rate=args.rate, duration_s=args.duration)
