"""The broker goes away: POST /api/pings answers 503 with Retry-After (never 202) while
it is down and 202 again once it is back; the sink reconnects and, although the
in-memory dev broker came back empty, writes the new pings. Runs its OWN broker
process so the session's broker is never disturbed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from app import create_app
from app.auth import mint_token
from app.broker import start_embedded_broker
from app.kafka_io import OffsetProbe, PingProducer, ensure_topics
from app.postgis_sink import PostgisSink
from tests.conftest import OUTPUT, free_port, wait_until
from tests.faults import check_history, key_of, keyed_pings, produce, row_count, stored_keys


@pytest.fixture
def own_broker(settings):
    s = settings.with_(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        topic_partitions=1,
        produce_timeout_s=2.0,
        kafka_session_timeout_ms=2000,
    )
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = open(OUTPUT / "own-broker.log", "ab")  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(start_embedded_broker(s, log))
        ensure_topics(s)

    def stop() -> None:
        procs[-1].kill()
        procs[-1].wait(10)

    start()
    yield s, start, stop, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log.close()


def pings(prefix: str, n: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"driver_id": f"{prefix}{i}", "lat": 6.5, "lon": 3.4, "ts": now - i} for i in range(n)]


def test_broker_down_means_503_then_202_and_the_sink_catches_up(own_broker, db, run_in_background):
    s, start, stop, _procs = own_broker
    app = create_app(s)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {mint_token(s, 'ingest')}"}
    sink = PostgisSink(s)
    run_in_background(sink)
    try:
        r = client.post("/api/pings", json=pings("before-", 20), headers=headers)
        assert r.status_code == 202 and r.get_json() == {"accepted": 20}
        wait_until(lambda: row_count(db) == 20, timeout=30)

        stop()
        started = time.monotonic()
        r = client.post("/api/pings", json=pings("down-", 3), headers=headers)
        assert r.status_code == 503, r.get_data()
        assert r.headers["Retry-After"].isdigit()
        assert r.get_json()["error"] == "unavailable"
        assert time.monotonic() - started < 10  # bounded, not hanging
        r = client.post("/api/pings", json=pings("down2-", 3), headers=headers)
        assert r.status_code == 503

        start()  # same port, empty: the memory store lost topics, groups and offsets
        r = client.post("/api/pings", json=pings("after-", 5), headers=headers)
        assert r.status_code == 202, r.get_data()  # a fresh producer, not the stuck one
        # the sink's stored position (20) is past the new topic's end (5): it must notice
        wait_until(lambda: row_count(db) == 25, timeout=60)
        found = stored_keys(db)
        assert sorted(d for d, _ in found) == sorted(
            [f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(5)]
        )
        assert max(found.values()) == 1
        assert sink.stats.topic_resets == 1
    finally:
        app.extensions["heatreplay"].close()


def test_a_broker_stalled_during_the_restart_check_does_not_rewrite_history(
    own_broker, db, monkeypatch, run_in_background
):
    """On restart the sink asks whether its stored offset still exists (a recreated topic
    starts over). A stall there used to read as "it does not": the sink rebased to 0 and
    wrote the whole partition a second time. Now only the broker's answer counts."""
    s, _start, _stop, procs = own_broker
    s = s.with_(sink_batch_wait_s=1.0, produce_timeout_s=10.0)
    pings = keyed_pings(300)
    producer = PingProducer(s)
    produce(producer, pings)
    producer.close()
    first = run_in_background(PostgisSink(s))
    wait_until(lambda: first.worker.stats.rows >= 300, timeout=60)
    first.worker.stop.set()
    first.thread.join(30)
    assert first.worker.stats.rows == 300

    broker = procs[-1]
    read_watermarks = OffsetProbe.watermarks
    stalls: list[float] = []

    def stall_after(self, topic, partition, timeout_s=5.0):  # the real answer, then a stall
        answer = read_watermarks(self, topic, partition, timeout_s)
        if not stalls:
            stalls.append(time.monotonic())
            os.kill(broker.pid, signal.SIGSTOP)
            threading.Timer(6.0, os.kill, (broker.pid, signal.SIGCONT)).start()
        return answer

    monkeypatch.setattr(OffsetProbe, "watermarks", stall_after)
    sink = PostgisSink(s)
    run_in_background(sink)
    wait_until(lambda: stalls, timeout=30)
    later = keyed_pings(100, start=300)
    producer = PingProducer(s)
    produce(producer, later)
    producer.close()
    wait_until(lambda: sink.stats.rows >= 100, timeout=90)
    assert sink.stats.topic_resets == 0
    check = check_history(db, {key_of(p) for p in pings + later})
    assert check.exact, check.as_dict()
