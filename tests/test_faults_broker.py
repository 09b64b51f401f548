"""The broker goes away: POST /api/pings answers 503 with Retry-After (never 202) while
it is down and 202 again once it is back; the sink reconnects and, although the
in-memory dev broker came back empty, writes the new pings. Runs its OWN broker
process so the session's broker is never disturbed."""

from __future__ import annotations

import subprocess
import time

import pytest

from app import create_app
from app.auth import mint_token
from app.broker import start_embedded_broker
from app.kafka_io import ensure_topics
from app.postgis_sink import PostgisSink
from tests.conftest import OUTPUT, free_port, wait_until
from tests.faults import row_count, stored_keys


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
    yield s, start, stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log.close()


def pings(prefix: str, n: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"driver_id": f"{prefix}{i}", "lat": 6.5, "lon": 3.4, "ts": now - i} for i in range(n)]


def test_broker_down_means_503_then_202_and_the_sink_catches_up(own_broker, db, run_in_background):
    s, start, stop = own_broker
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
