"""/healthz and /metrics on the real servers, with real failures (closed ports), and the
JSON-lines log format."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import create_app, metrics
from app.kafka_io import PingProducer
from app.limits import SocketSlots
from app.live_worker import LiveWorker
from app.logging_setup import configure_logging
from app.postgis_sink import PostgisSink
from tests.conftest import free_port, wait_until


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_healthz_and_metrics_report_each_dependency(client, settings):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "ok"
    assert {k: v["ok"] for k, v in body["checks"].items()} == {
        "postgres": True,
        "redis": True,
        "kafka": True,
    }
    up = scrape(client)
    assert one(up, "heatreplay_metrics_source_up", source="redis") == 1
    assert one(up, "heatreplay_metrics_source_up", source="kafka") == 1

    # Redis and Kafka really unreachable (closed ports); PostgreSQL still fine
    broken = create_app(
        settings.with_(
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
        )
    )
    try:
        bad = broken.test_client()
        r = bad.get("/healthz")
        assert r.status_code == 503
        body = r.get_json()
        assert body["status"] == "degraded"
        assert {k: v["ok"] for k, v in body["checks"].items()} == {
            "postgres": True,
            "redis": False,
            "kafka": False,
        }
        assert "Connection refused" in body["checks"]["redis"]["error"]
        assert body["checks"]["kafka"]["error"].startswith("no broker at 127.0.0.1:")
        # a scrape still answers, and says which sources it could not read
        down = scrape(bad)
        assert one(down, "heatreplay_metrics_source_up", source="redis") == 0
        assert one(down, "heatreplay_metrics_source_up", source="kafka") == 0
        assert one(down, "heatreplay_pings_accepted_total") == 0
    finally:
        broken.extensions["heatreplay"].close()


def test_metrics_are_exact_across_the_pipeline(
    settings, app, client, ingest_headers, run_in_background
):
    s = settings
    live, sink = LiveWorker(s), PostgisSink(s)
    run_in_background(live)
    run_in_background(sink)
    now = int(time.time() * 1000)
    good = [{"driver_id": f"d{i}", "lat": 6.5, "lon": 3.4, "ts": now - i} for i in range(3)]
    assert client.post("/api/pings", json=good, headers=ingest_headers).status_code == 202
    bad = [{"driver_id": "x", "lat": 91, "lon": 3.4}]
    assert client.post("/api/pings", json=bad, headers=ingest_headers).status_code == 422
    ahead = [*good[:2], {**good[2], "ts": now + 3_600_000}]  # one an hour ahead: all refused
    assert client.post("/api/pings", json=ahead, headers=ingest_headers).status_code == 422
    many = [good[0]] * 10_001
    assert client.post("/api/pings", json=many, headers=ingest_headers).status_code == 413
    r = client.post(
        "/api/pings", data=b"{nope", headers={**ingest_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    producer = PingProducer(s)
    producer.send([(b"junk", b"not a ping")])  # straight to the topic: a dead letter
    producer.close()

    wait_until(lambda: sink.stats.rows == 3 and sink.stats.dead_letters == 1, timeout=40)
    wait_until(lambda: live.stats.pings == 3 and live.stats.dead_letters == 1, timeout=40)

    groups = (s.group_live, s.group_sink)

    def committed_everything():
        m = scrape(client)
        total = {
            g: sum(
                m[("heatreplay_consumer_committed_offset", key)]
                for (name, key) in m
                if name == "heatreplay_consumer_committed_offset" and ("group", g) in key
            )
            for g in groups
        }
        # the workers' batch figures reach Redis from a background thread (within 0.2 s)
        figures_in = (
            m.get(("heatreplay_sink_batches_total", ())) == sink.stats.batches
            and m.get(("heatreplay_live_batches_total", ())) == live.stats.batches
        )
        return m if total == {g: 4 for g in groups} and figures_in else None

    # the sink commits to Kafka asynchronously after PostgreSQL: wait for it
    m = wait_until(committed_everything, timeout=20, interval=0.3)

    assert one(m, "heatreplay_pings_accepted_total") == 3
    assert one(m, "heatreplay_requests_rejected_total", reason="invalid_ping") == 2
    assert one(m, "heatreplay_requests_rejected_total", reason="malformed_json") == 1
    assert one(m, "heatreplay_requests_rejected_total", reason="too_many_pings") == 1
    assert one(m, "heatreplay_pings_rejected_total", reason="invalid_ping") == 1 + 3
    assert one(m, "heatreplay_pings_rejected_total", reason="malformed_json") == 0
    assert one(m, "heatreplay_pings_rejected_total", reason="too_many_pings") == 10_001
    assert one(m, "heatreplay_dead_letters_total", consumer="sink") == 1
    assert one(m, "heatreplay_dead_letters_total", consumer="live") == 1
    assert one(m, "heatreplay_sink_rows_total") == 3
    assert one(m, "heatreplay_sink_batches_total") == sink.stats.batches
    assert one(m, "heatreplay_live_pings_total") == 3
    assert one(m, "heatreplay_live_batches_total") == live.stats.batches

    # histograms: one observation per batch, sums equal the counters
    for hist, batches in (
        ("heatreplay_sink_batch_rows", sink.stats.batches),
        ("heatreplay_sink_commit_seconds", sink.stats.batches),
        ("heatreplay_live_batch_pings", live.stats.batches),
        ("heatreplay_live_apply_seconds", live.stats.batches),
    ):
        assert one(m, hist + "_count") == batches, hist
        assert one(m, hist + "_bucket", le="+Inf") == batches, hist
    assert one(m, "heatreplay_sink_batch_rows_sum") == 3
    assert one(m, "heatreplay_live_batch_pings_sum") == 3
    # every sink batch held at most 3 rows, so all sit in the le=10 bucket
    assert one(m, "heatreplay_sink_batch_rows_bucket", le="10") == sink.stats.batches

    # lag per group and partition: everything processed
    lag = {
        dict(k)["group"] + "/" + dict(k)["partition"]: v
        for (name, k), v in m.items()
        if name == "heatreplay_consumer_lag"
    }
    assert lag == {f"{g}/{p}": 0 for g in groups for p in ("0", "1")}

    # live frame build time: the helper the live API calls
    with app.app_context():
        from app.services import services

        for seconds in (0.003, 0.004, 0.02):
            metrics.live_frame_built(services(), seconds)
    m = scrape(client)
    name = "heatreplay_live_frame_build_seconds"
    assert one(m, name + "_bucket", le="0.0025") == 0
    assert one(m, name + "_bucket", le="0.005") == 2
    assert one(m, name + "_bucket", le="0.025") == 3
    assert one(m, name + "_count") == 3
    assert one(m, name + "_sum") == pytest.approx(0.027)


def test_open_sockets_are_the_unexpired_leases(settings, client):
    rc = redis.Redis.from_url(settings.redis_url)
    slots = SocketSlots(rc, settings.redis_key_prefix, limit=5)
    taken = [slots.acquire("tok-a"), slots.acquire("tok-a"), slots.acquire("tok-b")]
    # a crashed process's socket: its lease ran out and nobody renews it
    dead_key = f"{settings.redis_key_prefix}sockets:tok-c"
    rc.zadd(dead_key, {"gone": int(time.time() * 1000) - 1000})
    try:
        assert one(scrape(client), "heatreplay_websockets_open") == 3
        slots.release(taken.pop())
        assert one(scrape(client), "heatreplay_websockets_open") == 2
    finally:
        for slot in taken:
            slots.release(slot)
        rc.delete(dead_key, slots.key("tok-a"), slots.key("tok-b"))
        rc.close()
    assert one(scrape(client), "heatreplay_websockets_open") == 0


def test_logs_are_one_json_object_per_line_with_kafka_context():
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    try:
        log = logging.getLogger("app.postgis_sink")
        log.info(
            "batch committed %d rows", 3, extra={"topic": "pings", "partition": 1, "offset": 41}
        )
        log.debug("not at INFO")
        try:
            raise ValueError("bad value")
        except ValueError:
            logging.getLogger("app.x").exception("failed")
    finally:
        configure_logging()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("ts"))
    assert first == {
        "level": "info",
        "logger": "app.postgis_sink",
        "msg": "batch committed 3 rows",
        "topic": "pings",
        "partition": 1,
        "offset": 41,
    }
    assert (second["level"], second["msg"]) == ("error", "failed")
    assert second["exc"].endswith("ValueError: bad value")
