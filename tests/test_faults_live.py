"""Live state that heals: a real live-worker process is SIGKILLed and its Redis keys
wiped, then the keys are wiped again under a running worker; each time the live frame
must be exact again within one live window W. Exact = equal to the SPEC heat value
computed here from the pings that were produced."""

from __future__ import annotations

import random
import subprocess
import time

import geohash
import redis

from app.kafka_io import PingProducer
from app.live_counts import LiveCounts
from app.live_heal import marker_key
from app.ping import Ping
from tests.conftest import free_port, wait_until
from tests.faults import Worker, produce

W_S = 60.0


def now_ms() -> int:
    return int(time.time() * 1000)


def expected_cells(pings: list[Ping], at_ms: int, window_ms: int, precision: int) -> dict:
    """SPEC: distinct drivers whose newest ping with ts in (t - W, t] lies in the cell."""
    newest: dict[str, tuple[int, str]] = {}
    for p in pings:
        if at_ms - window_ms < p.ts <= at_ms:
            cand = (p.ts, geohash.encode(p.lat, p.lon, 8))
            if p.driver_id not in newest or cand > newest[p.driver_id]:
                newest[p.driver_id] = cand
    cells: dict[str, int] = {}
    for _ts, gh in newest.values():
        cells[gh[:precision]] = cells.get(gh[:precision], 0) + 1
    return cells


def wave(rng: random.Random, drivers: int, t_ms: int) -> list[Ping]:
    """Every driver pings once, somewhere in Lagos, a few seconds before t."""
    return [
        Ping(
            driver_id=f"drv-{d:04d}",
            lat=6.40 + rng.random() * 0.25,
            lon=3.20 + rng.random() * 0.40,
            ts=t_ms - rng.randrange(0, 3000),
        )
        for d in range(drivers)
    ]


def wipe_prefix(client: redis.Redis, prefix: str) -> int:
    """What a Redis restart does to this deployment: every key under its prefix gone."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    return int(client.delete(*keys)) if keys else 0


def test_live_counts_heal_after_sigkill_and_redis_wipes(settings):
    s = settings.with_(live_window_s=W_S, kafka_session_timeout_ms=2000)
    window = s.live_window_ms
    client = redis.Redis.from_url(s.redis_url)
    live = LiveCounts(client, s)
    producer = PingProducer(s)
    # the heal replays both message forms: a deployment may switch
    # KAFKA_PINGS_PER_MESSAGE with messages of the other form still in the window
    arrays = PingProducer(s.with_(kafka_pings_per_message=100))
    rng = random.Random(11)
    sent: list[Ping] = []

    def send(pings: list[Ping], batched: bool = False) -> None:
        if batched:
            assert arrays.send_pings(pings) == len(pings)
        else:
            produce(producer, pings)
        sent.extend(pings)

    def exact() -> bool:
        t = now_ms()
        return live.cells(6, t) == expected_cells(sent, t, window, 6)

    worker = Worker("live-worker", s, f"live-{s.group_live}.log")
    try:
        worker.start()
        send(wave(rng, 400, now_ms()))
        send(wave(rng, 400, now_ms()), batched=True)  # drivers move: the newest decides
        wait_until(exact, timeout=30)

        # 1. SIGKILL, Redis loses the keys, more pings arrive while nobody counts
        worker.kill9()
        assert wipe_prefix(client, s.redis_key_prefix) > 0
        send(wave(rng, 250, now_ms()), batched=True)
        killed_at = time.monotonic()
        assert live.cells(6, now_ms()) == {}
        worker.start()
        wait_until(exact, timeout=W_S)
        healed_after_restart = time.monotonic() - killed_at

        # 2. the keys vanish under a running worker, with no new pings to wake it
        wiped_at = time.monotonic()
        assert wipe_prefix(client, s.redis_key_prefix) > 0
        wait_until(exact, timeout=W_S)
        healed_in_place = time.monotonic() - wiped_at
        t = now_ms()
        # not an empty match: the drivers of the third wave are all still in the window
        assert sum(live.cells(6, t).values()) == sum(expected_cells(sent, t, window, 6).values())
        assert sum(expected_cells(sent, t, window, 6).values()) >= 250
        print(
            f"live heal: after kill+wipe {healed_after_restart:.1f}s, wipe {healed_in_place:.1f}s"
        )

        # later pings are counted as usual
        send(wave(rng, 50, now_ms()))
        wait_until(exact, timeout=15)
        assert worker.terminate() == 0
    finally:
        worker.cleanup()
        producer.close()
        arrays.close()
        client.delete(marker_key(s))
        client.close()


def start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    wait_until(lambda: _pings(probe), timeout=10, interval=0.05)
    probe.close()
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_live_worker_waits_out_a_redis_outage_and_rebuilds(settings):
    """Our own redis-server (the shared one is never stopped): stop it under a running
    worker, produce while it is down, start it empty; the frame is exact again."""
    port = free_port()
    s = settings.with_(
        live_window_s=W_S, kafka_session_timeout_ms=2000, redis_url=f"redis://127.0.0.1:{port}/0"
    )
    server = start_redis(port)
    client = redis.Redis(port=port)
    live = LiveCounts(client, s)
    producer = PingProducer(s)
    rng = random.Random(12)
    sent: list[Ping] = []
    worker = Worker("live-worker", s, f"live-{s.group_live}.log")

    def exact() -> bool:
        t = now_ms()
        return live.cells(6, t) == expected_cells(sent, t, s.live_window_ms, 6)

    try:
        worker.start()
        sent += wave(rng, 200, now_ms())
        produce(producer, sent)
        wait_until(exact, timeout=30)
        server.kill()
        server.wait(10)
        more = wave(rng, 300, now_ms())
        produce(producer, more)  # accepted while Redis is down
        sent += more
        time.sleep(2)
        assert worker.alive, "the live worker died with Redis"
        server = start_redis(port)
        wait_until(exact, timeout=W_S)
        assert sum(live.cells(6, now_ms()).values()) == 300
        assert worker.terminate() == 0
        log_text = worker.log_path.read_text()
        assert "Redis unavailable" in log_text and "Redis lost the live state" in log_text
    finally:
        worker.cleanup()
        producer.close()
        client.close()
        server.kill()
        server.wait(10)
