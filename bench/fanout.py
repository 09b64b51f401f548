"""4. Fan-out: N live sockets on the web server as the product runs it (2 gunicorn workers,
each its own hub; ``--web-workers 1`` for one process), all on one view or each on its
own view, under a steady background load that changes every view's counts every round.

Per socket: frames delivered per second, and each frame's delay = the moment the client
received it - the frame's ``t`` (the instant the hub read the counts for it), over the
frames the hub built during the measurement (steady state; those built before it, during
the connect storm, are counted apart). The clients are threads of this process
on the same 2 cores as the server, so their own scheduling is part of the delay (their
CPU share is reported). Server RSS and CPU are the gunicorn workers', summed, RSS sampled
every 0.2 s.

By default the clients offer permessage-deflate as browsers do (bench.deflate_client),
so the server compresses what a browser would get; ``--no-deflate`` uses websocket-client,
which offers no extensions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import websocket

from bench.deflate_client import Closed, DeflateSocket
from bench.live_latency import percentile
from bench.load import LAGOS, LoadGenerator, LoadSpec
from bench.stack import Stack, cpu_seconds, machine_busy_seconds, rss_kib, wait_for

_T = re.compile(rb'"t":"([^"]+)"')


def _frame_ms(data: bytes) -> float | None:
    match = _T.search(data, 0, 200)
    if not match:
        return None
    return datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00")).timestamp() * 1000


class Viewer(threading.Thread):
    def __init__(self, url: str, counting: threading.Event, stop: threading.Event, deflate: bool):
        super().__init__(daemon=True)
        self.url = url
        self.deflate = deflate
        self.counting = counting
        self.stop = stop
        self.delays: list[float] = []
        self.built_at: list[float] = []  # each counted frame's t (epoch ms)
        self.ws: websocket.WebSocket | DeflateSocket | None = None
        self.error: str | None = None

    def connect(self) -> None:
        if self.deflate:
            self.ws = DeflateSocket(self.url, timeout=30)
        else:
            self.ws = websocket.create_connection(self.url, timeout=30, skip_utf8_validation=True)
        # no receive timeout: websocket-client loses its framing when a timeout hits in
        # the middle of a large frame; close() aborts the socket instead
        self.ws.settimeout(None)
        self.start()

    def run(self) -> None:
        assert self.ws is not None
        while not self.stop.is_set():
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, Closed, OSError) as exc:
                if not self.stop.is_set():
                    self.error = repr(exc)
                return
            received = time.time() * 1000
            if self.counting.is_set():
                data = raw.encode() if isinstance(raw, str) else raw
                t = _frame_ms(data)
                if t is not None:
                    self.delays.append(received - t)
                    self.built_at.append(t)

    def close(self) -> None:
        if isinstance(self.ws, DeflateSocket):
            with contextlib.suppress(OSError):
                self.ws.sock.shutdown(socket.SHUT_RDWR)
            self.ws.close()
        elif self.ws is not None:
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self.ws.abort()
                self.ws.close(timeout=0)


def _open_sockets(stack: Stack) -> int:
    """Sockets the server still counts (app.limits.SocketSlots' per-token sets)."""
    pattern = stack.settings.redis_key_prefix.replace("{", "\\{").replace("}", "\\}")
    keys = stack.redis.scan_iter(match=pattern + "sockets:*", count=1000)
    return sum(int(stack.redis.zcard(key)) for key in keys)


def _views(n: int, scattered: bool, seed: int) -> list[str]:
    west, south, east, north = LAGOS
    if not scattered:
        return [f"precision=6&bbox={west},{south},{east},{north}"] * n
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        w = west + rnd.random() * (east - west - 0.1)
        s = south + rnd.random() * (north - south - 0.1)
        out.append(
            f"precision={rnd.choice((6, 7))}&bbox={w:.4f},{s:.4f},{w + 0.1:.4f},{s + 0.1:.4f}"
        )
    return out


def one_case(
    stack: Stack, n: int, scattered: bool, measure_s: float, deflate: bool
) -> dict[str, Any]:
    token = stack.token("viewer")
    counting, stop = threading.Event(), threading.Event()
    viewers = [
        Viewer(f"{stack.ws}/ws/live?{view}&token={token}", counting, stop, deflate)
        for view in _views(n, scattered, seed=n)
    ]
    workers = stack.pids()["web"]
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda v: v.connect(), viewers))
    connect_s = time.monotonic() - started
    time.sleep(1.0)  # past the connect frames
    peak = 0
    counting.set()
    window_ms = time.time() * 1000
    t0 = time.monotonic()
    cpu0 = (_cpu(workers), time.process_time(), machine_busy_seconds())
    stats0 = _after_a_round(stack)
    stats_t0 = time.monotonic()
    while time.monotonic() - t0 < measure_s:
        peak = max(peak, sum(rss_kib(w) for w in workers))
        time.sleep(0.2)
    counting.clear()
    elapsed = time.monotonic() - t0
    cpu1 = (_cpu(workers), time.process_time(), machine_busy_seconds())
    stats = {k: v - stats0.get(k, 0.0) for k, v in _hub_stats(stack).items()}
    stats_s = time.monotonic() - stats_t0
    rounds = stats.get("live_frame_rounds", 0.0)
    load = [round(x, 2) for x in os.getloadavg()]
    web_cpu, client_cpu, machine_cpu = (
        (b - a) / elapsed * 100 for a, b in zip(cpu0, cpu1, strict=True)
    )
    stop.set()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda v: v.close(), viewers))
    for v in viewers:
        v.join(3)
    # the next case starts once the server has let go of these sockets, so tearing them
    # down does not overlap the next case's measurement
    closed = time.monotonic()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: _open_sockets(stack) == 0, 20, "the sockets to close")
    teardown_s = time.monotonic() - closed
    every = [d for v in viewers for d in v.delays]
    # steady state: frames the hub built during the window. Frames received in it but
    # built before it (during the connect storm: 1,000 sockets opening in a few seconds,
    # each building its first frame) arrive seconds late in the first second or two
    # and are reported apart.
    delays = [
        d for v in viewers for d, t in zip(v.delays, v.built_at, strict=True) if t >= window_ms
    ]
    fps = [len(v.delays) / elapsed for v in viewers]
    return {
        "sockets": n,
        "views": "scattered" if scattered else "one",
        "connect_s": round(connect_s, 2),
        "sockets_compressed": sum(
            1 for v in viewers if isinstance(v.ws, DeflateSocket) and v.ws.deflate
        ),
        "socket_errors": sum(1 for v in viewers if v.error),
        "socket_error_sample": next((v.error for v in viewers if v.error), None),
        "frames": len(delays),
        "fps_per_socket_mean": round(sum(fps) / len(fps), 2),
        "fps_per_socket_min": round(min(fps), 2),
        "frame_delay_ms_p50": round(percentile(delays, 50), 1),
        "frame_delay_ms_p99": round(percentile(delays, 99), 1),
        "frames_built_before_the_window": len(every) - len(delays),
        "frame_delay_ms_p99_with_those": round(percentile(every, 99), 1),
        # what drives the frames: the hub builds a round when the live worker applied
        # a batch (at most LIVE_FPS a second); a round's time includes writing to the
        # sockets that take the frame at once
        "live_batches_per_s": round(stats.get("live_batches", 0.0) / stats_s, 2),
        "hub_rounds_per_s": round(rounds / stats_s, 2),
        "hub_round_ms_mean": round(stats.get("live_frame_seconds", 0.0) / rounds * 1000, 1)
        if rounds
        else None,
        # of the frames the hubs handed to sockets: written at once by the hub, left to
        # the socket's sender thread, or dropped unseen for a newer one (a slow reader)
        "frames_written_by_hub": int(stats.get("live_frames_written", 0)),
        "frames_left_to_sender": int(stats.get("live_frames_queued", 0)),
        "frames_replaced_unseen": int(stats.get("live_frames_replaced", 0)),
        "web_worker_rss_mib_peak": round(peak / 1024, 1),
        # while counting, % of one core: the server's worker, this process (the client
        # threads: if they were busy, the delays would be partly theirs), the machine
        "cpu_percent_web_worker": round(web_cpu),
        "cpu_percent_clients": round(client_cpu),
        "cpu_percent_machine": round(machine_cpu),
        "load_average": load,
        "server_teardown_s": round(teardown_s, 2),
    }


def _hub_stats(stack: Stack) -> dict[str, float]:
    """The live hub's and live worker's counters (app.metrics), summed over processes."""
    raw = stack.redis.hgetall(stack.settings.redis_key_prefix + "stats")
    names = (
        "live_frame_rounds",
        "live_frame_seconds",
        "live_batches",
        "live_frames_written",
        "live_frames_queued",
        "live_frames_replaced",
    )
    return {k.decode(): float(v) for k, v in raw.items() if k.decode() in names}


def _after_a_round(stack: Stack, timeout: float = 3.0) -> dict[str, float]:
    """The counters just after a hub round ends, so the rounds counted next are whole
    ones: a round still under way from the connect storm (seconds long) would
    otherwise add its whole time to the window's."""
    first = _hub_stats(stack)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _hub_stats(stack)
        if now.get("live_frame_rounds") != first.get("live_frame_rounds"):
            return now
        time.sleep(0.01)
    return first


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def run(
    sockets: tuple[int, ...] = (100, 500, 1000),
    measure_s: float = 10.0,
    rate: float = 5_000,
    drivers: int = 5_000,
    web_workers: int = 2,
    deflate: bool = True,
) -> dict[str, Any]:
    most = max(sockets)
    # each worker could hold every socket: the kernel does not split them evenly
    threads = most + 100
    with Stack(
        "fanout",
        processes=("web", "live-worker"),
        web_workers=web_workers,
        web_threads=threads,
        # sockets of the previous case may still hold their lease for a moment
        max_sockets_per_token=3 * most + 100,
        ws_max_messages_per_s=1000.0,
    ) as stack:
        stack.wait_pipeline_ready()
        spec = LoadSpec(
            port=stack.settings.web_port,
            token=stack.token("ingest"),
            processes=1,
            threads=1,
            batch=1_000,
            drivers=drivers,
            rate=rate,
        )
        idle_rss = stack.rss_mib()["web"]
        cases = []
        with LoadGenerator(spec):
            for scattered in (False, True):
                for n in sockets:
                    cases.append(one_case(stack, n, scattered, measure_s, deflate))
                    stack.check_alive()
    return {
        "load": {
            "background_pings_per_s": rate,
            "drivers": drivers,
            "live_fps": stack.settings.live_fps,
            "web": f"{web_workers} gunicorn gthread worker(s), {threads} threads each "
            "(figures: summed over the workers)",
            "one_view": "precision 6, all of Lagos",
            "scattered_views": "each socket its own 0.1 deg box, precision 6 or 7",
            "clients": "offer permessage-deflate, as browsers do"
            if deflate
            else "websocket-client (no extensions)",
        },
        "web_worker_rss_mib_idle": idle_rss,
        "cases": cases,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sockets", default="100,500,1000", help="comma-separated counts")
    parser.add_argument("--measure", type=float, default=10.0, help="seconds per case")
    parser.add_argument(
        "--web-workers",
        type=int,
        default=2,
        help="gunicorn workers, the product's default 2 (each runs its own hub; the "
        "kernel spreads the sockets)",
    )
    parser.add_argument(
        "--no-deflate",
        action="store_true",
        help="clients offer no permessage-deflate (browsers do)",
    )


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        sockets=tuple(int(x) for x in args.sockets.split(",")),
        measure_s=args.measure,
        web_workers=args.web_workers,
        deflate=not args.no_deflate,
    )
