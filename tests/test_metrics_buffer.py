"""Buffered worker figures (app.metrics.CounterBuffer): summed exactly, histograms
included, delivered without the caller waiting, never raising when Redis is gone."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import metrics
from tests.conftest import wait_until


def _prefix() -> str:
    return f"{{tm{uuid.uuid4().hex[:8]}}}:"


def test_figures_from_many_threads_add_up_exactly_with_their_histograms() -> None:
    client = redis.Redis()
    prefix = _prefix()
    buffer = metrics.CounterBuffer(client, prefix, interval_s=0.05)
    try:

        def work(rows: int) -> None:
            for _ in range(200):
                buffer.add({"sink_batches": 1, "sink_rows": rows, "sink_commit_seconds": 0.003})

        threads = [threading.Thread(target=work, args=(rows,)) for rows in (7, 700, 7000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # delivered by the background thread, without close()
        got = wait_until(
            lambda: (s := metrics.read(client, prefix)).get("sink_batches") == 600 and s,
            timeout=5,
        )
        assert got["sink_rows"] == 200 * (7 + 700 + 7000)
        assert got["sink_rows:le=10"] == 200
        assert got["sink_rows:le=1000"] == 200
        assert got["sink_rows:le=10000"] == 200
        assert got["sink_commit_seconds:le=0.005"] == 600
        assert abs(got["sink_commit_seconds"] - 600 * 0.003) < 1e-9
    finally:
        buffer.close()
        client.delete(metrics.stats_key(prefix))
        client.close()


def test_close_sends_what_is_left() -> None:
    client = redis.Redis()
    prefix = _prefix()
    buffer = metrics.CounterBuffer(client, prefix, interval_s=3600)  # never on its own
    buffer.add({"live_batches": 1, "live_pings": 5})
    buffer.add({"live_batches": 1, "live_pings": 6})
    assert metrics.read(client, prefix) == {}
    buffer.close()
    got = metrics.read(client, prefix)
    assert got["live_batches"] == 2 and got["live_pings"] == 11 and got["live_pings:le=10"] == 2
    client.delete(metrics.stats_key(prefix))
    client.close()


def test_add_never_waits_for_a_redis_that_does_not_answer() -> None:
    # a listener that never reads: a synchronous write would block for socket_timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    stuck = redis.Redis(
        port=silent.getsockname()[1],
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    buffer = metrics.CounterBuffer(stuck, _prefix(), interval_s=0.01)
    try:
        time.sleep(0.1)  # the background thread is now waiting on the silent socket
        started = time.perf_counter()
        for _ in range(1000):
            buffer.add({"sink_batches": 1, "sink_rows": 10})
        assert time.perf_counter() - started < 1.0  # one write would wait 2 s
    finally:
        buffer.close()  # the timed-out write is logged and dropped, nothing raised
        silent.close()
