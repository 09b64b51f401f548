"""Operations: /healthz (open) and /metrics (Prometheus text).

/metrics is rendered by prometheus_client from a collector that reads, at scrape time,
the counters every process shares in Redis (app/metrics.py) and the consumer groups'
committed offsets against the partitions' end offsets in Kafka; so any web process on
any host answers with the same figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, TopicPartition
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app import metrics
from app.auth import require_metrics_access
from app.kafka_io import broker_reachable
from app.services import Services, services
from app.settings import Settings

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)

# counter families straight from the shared hash: (metric name, hash field, help)
_COUNTERS = (
    ("heatreplay_pings_accepted", "pings_accepted", "Pings acknowledged by the broker (202)."),
    ("heatreplay_sink_batches", "sink_batches", "Batches committed to PostGIS."),
    ("heatreplay_sink_rows", "sink_rows", "Ping rows committed to PostGIS."),
    ("heatreplay_live_batches", "live_batches", "Batches applied to the live counts."),
    ("heatreplay_live_pings", "live_pings", "Pings applied to the live counts."),
    ("heatreplay_live_cell_changes", "live_cell_changes", "Live cell counter changes."),
    ("heatreplay_live_frame_rounds", "live_frame_rounds", "Live hub rounds (web processes)."),
    ("heatreplay_live_frames_built", "live_frames_built", "Live frames built, one per view."),
    (
        "heatreplay_live_frames_written",
        "live_frames_written",
        "Live frames the hub wrote to a socket itself (the socket took them at once).",
    ),
    (
        "heatreplay_live_frames_queued",
        "live_frames_queued",
        "Live frames left to a socket's sender thread (the socket was busy or full).",
    ),
    (
        "heatreplay_live_frames_replaced",
        "live_frames_replaced",
        "Live frames dropped unseen for a newer one: a client reading slower than LIVE_FPS.",
    ),
)
# histogram families: (metric name, hash field, help)
_HISTOGRAMS = (
    ("heatreplay_sink_batch_rows", "sink_rows", "Rows per PostGIS sink batch."),
    (
        "heatreplay_sink_commit_seconds",
        "sink_commit_seconds",
        "PostGIS transaction time per sink batch (COPY + rollup + offsets).",
    ),
    ("heatreplay_live_batch_pings", "live_pings", "Pings per live-worker batch."),
    (
        "heatreplay_live_apply_seconds",
        "live_apply_seconds",
        "Live-worker time per batch (Lua apply + offset commit).",
    ),
    (
        "heatreplay_live_frame_build_seconds",
        "live_frame_seconds",
        "Time of one live hub round (Redis reads, every view's frame, delivery).",
    ),
)


def _check(fn: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
        result: dict[str, Any] = {"ok": True}
    except Exception as exc:
        result = {"ok": False, "error": (str(exc).splitlines() or [type(exc).__name__])[0][:200]}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@bp.get("/healthz")
def healthz() -> Any:
    svc = services()

    def pg() -> None:
        with svc.pool.connection(timeout=3) as conn:
            conn.execute("SELECT 1")

    def kafka() -> None:
        if not broker_reachable(svc.settings, timeout_s=2):
            raise RuntimeError(f"no broker at {svc.settings.kafka_bootstrap}")

    checks = {"postgres": _check(pg), "redis": _check(svc.redis.ping), "kafka": _check(kafka)}
    ok = all(c["ok"] for c in checks.values())
    return {"status": "ok" if ok else "degraded", "checks": checks}, 200 if ok else 503


@bp.get("/metrics")
@require_metrics_access
def prometheus() -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeatreplayCollector(services()))
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # -1: the group has committed nothing for this partition yet
    low: int
    high: int

    @property
    def lag(self) -> int:
        """Messages the group has still to process. Clamped at 0: a broker whose end
        offsets trail (the dev broker, see docs/operations.md) can report less."""
        start = self.committed if self.committed >= 0 else self.low
        return max(0, self.high - start)


def consumer_lag(settings: Settings, timeout_s: float = 2.0) -> list[PartitionLag]:
    """Committed offset vs end offset for each partition of the pings topic, for both
    consumer groups. Reads offsets only: it never joins the groups."""
    topic = settings.topic_pings
    rows: list[PartitionLag] = []
    for group in (settings.group_live, settings.group_sink):
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "socket.timeout.ms": int(timeout_s * 1000),
            }
        )
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            committed = {
                tp.partition: max(-1, tp.offset) for tp in consumer.committed(parts, timeout_s)
            }
            for tp in parts:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                rows.append(
                    PartitionLag(
                        group, topic, tp.partition, committed.get(tp.partition, -1), low, high
                    )
                )
        finally:
            consumer.close()
    return rows


def sockets_open(client: redis.Redis, prefix: str) -> int:
    """Unexpired socket leases over every token (app/limits.py keeps one sorted set per
    token, scored by lease expiry). SCAN is fine here: it runs once per scrape, over a
    keyspace of a dozen live keys plus one key per token with sockets open."""
    now_s, now_us = client.time()
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    keys = list(client.scan_iter(match=f"{prefix}sockets:*", count=1000))
    if not keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zcount(key, f"({now_ms}", "+inf")
    return sum(int(n) for n in pipe.execute())


class HeatreplayCollector(Collector):
    """Builds every family at scrape time; a source that cannot be read is reported by
    ``heatreplay_metrics_source_up`` and skipped, so a scrape never fails."""

    def __init__(self, svc: Services):
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        settings = self.svc.settings
        source_up = GaugeMetricFamily(
            "heatreplay_metrics_source_up",
            "1 if this scrape could read the source (redis: shared counters, kafka: lag).",
            labels=["source"],
        )
        try:
            counts = metrics.read(self.svc.redis, settings.redis_key_prefix)
            source_up.add_metric(["redis"], 1)
        except redis.RedisError as exc:
            log.warning("metrics: redis unreadable: %s", exc)
            counts = {}
            source_up.add_metric(["redis"], 0)
        yield from _from_counts(counts)
        try:
            yield GaugeMetricFamily(
                "heatreplay_websockets_open",
                "WebSockets open now (live + replay), across every web process.",
                value=sockets_open(self.svc.redis, settings.redis_key_prefix),
            )
        except redis.RedisError as exc:
            log.warning("metrics: socket leases unreadable: %s", exc)
        try:
            lag = consumer_lag(settings)
            source_up.add_metric(["kafka"], 1)
        except KafkaException as exc:
            log.warning("metrics: kafka offsets unreadable: %s", exc)
            lag = []
            source_up.add_metric(["kafka"], 0)
        yield from _from_lag(lag)
        yield source_up


def _from_counts(counts: dict[str, float]) -> Iterator[Metric]:
    for name, field, doc in _COUNTERS:
        yield CounterMetricFamily(name, doc, value=counts.get(field, 0.0))

    rejected = CounterMetricFamily(
        "heatreplay_requests_rejected",
        "Ingest requests refused, by reason (nothing of a refused request is produced).",
        labels=["reason"],
    )
    pings_rejected = CounterMetricFamily(
        "heatreplay_pings_rejected",
        "Pings in refused ingest requests, by reason (a malformed or empty body adds none).",
        labels=["reason"],
    )
    dead = CounterMetricFamily(
        "heatreplay_dead_letters",
        "Messages dead-lettered (undecodable or breaking the ping rules), by consumer.",
        labels=["consumer"],
    )
    dead.add_metric(["sink"], counts.get("sink_dead_letters", 0.0))
    dead.add_metric(["live"], counts.get("live_dead_letters", 0.0))
    for key, value in sorted(counts.items()):
        if key.startswith("requests_rejected:"):
            rejected.add_metric([key.split(":", 1)[1]], value)
        elif key.startswith("pings_rejected:"):
            pings_rejected.add_metric([key.split(":", 1)[1]], value)
    yield rejected
    yield pings_rejected
    yield dead

    for name, field, doc in _HISTOGRAMS:
        bounds = metrics.HISTOGRAMS[field]
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in bounds:
            cumulative += counts.get(f"{field}:le={bound:g}", 0.0)
            buckets.append((f"{bound:g}", cumulative))
        cumulative += counts.get(f"{field}:le=+Inf", 0.0)
        buckets.append(("+Inf", cumulative))
        # the sum field predates the buckets: with no observation recorded, report 0
        total = counts.get(field, 0.0) if cumulative else 0.0
        yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def _from_lag(rows: list[PartitionLag]) -> Iterator[Metric]:
    labels = ["group", "topic", "partition"]
    lag = GaugeMetricFamily(
        "heatreplay_consumer_lag",
        "Messages not yet processed by the group (end offset - committed offset; a "
        "message holds up to KAFKA_PINGS_PER_MESSAGE pings); approximate on the dev "
        "broker, whose end offsets trail multi-message batches.",
        labels=labels,
    )
    committed = GaugeMetricFamily(
        "heatreplay_consumer_committed_offset",
        "The group's committed offset (-1: none yet).",
        labels=labels,
    )
    end = GaugeMetricFamily(
        "heatreplay_topic_end_offset", "The partition's end (high watermark) offset.", labels=labels
    )
    for row in rows:
        key = [row.group, row.topic, str(row.partition)]
        lag.add_metric(key, row.lag)
        committed.add_metric(key, row.committed)
        end.add_metric(key, row.high)
    yield lag
    yield committed
    yield end
