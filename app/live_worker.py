"""Live counter worker: its own consumer group, keeps the live heat in Redis.

Per batch: decode once, keep each driver's newest ping, one Lua call applies it (and
expires quiet drivers), one PUBLISH tells the web processes; then the Kafka offsets are
committed — after the Redis write they cover.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis
from confluent_kafka import Consumer, TopicPartition

from app import metrics
from app.dead_letter import DeadLetters
from app.kafka_io import consume_batch, consumer_config
from app.live_counts import LiveCounts
from app.ping import Ping
from app.postgis_sink import decode_batch
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LiveStats:
    batches: int = 0
    pings: int = 0
    changed: int = 0
    dead_letters: int = 0


@dataclass
class LiveWorker:
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    stats: LiveStats = field(default_factory=LiveStats)

    def run(self) -> LiveStats:
        settings = self.settings
        client = redis.Redis.from_url(settings.redis_url)
        live = LiveCounts(client, settings)
        consumer = Consumer(consumer_config(settings, settings.group_live))
        dead = DeadLetters(settings, source="live_worker")
        consumer.subscribe([settings.topic_pings])
        try:
            while not self.stop.is_set():
                deadline = time.monotonic() + settings.live_batch_wait_s
                messages = consume_batch(
                    consumer, settings.live_batch_max, settings.live_batch_wait_s
                )
                while messages and len(messages) < settings.live_batch_max:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    more = consume_batch(consumer, settings.live_batch_max - len(messages), left)
                    if not more:
                        break
                    messages += more
                if not messages:
                    continue
                decoded = decode_batch(messages)
                pings = [p for p in decoded if isinstance(p, Ping)]
                bad = [
                    (m, r)
                    for m, r in zip(messages, decoded, strict=True)
                    if not isinstance(r, Ping)
                ]
                if bad:
                    dead.send(bad)
                    self.stats.dead_letters += len(bad)
                started = time.perf_counter()
                changed = live.apply(pings, now_ms=int(time.time() * 1000))
                self.stats.changed += changed
                self.stats.batches += 1
                self.stats.pings += len(pings)
                offsets: dict[int, int] = {}
                for m in messages:
                    offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
                consumer.commit(
                    offsets=[
                        TopicPartition(settings.topic_pings, p, o) for p, o in offsets.items()
                    ],
                    asynchronous=False,
                )
                metrics.incr(
                    client,
                    settings.redis_key_prefix,
                    {
                        "live_batches": 1,
                        "live_pings": len(pings),
                        "live_cell_changes": changed,
                        "live_dead_letters": len(bad),
                        "live_apply_seconds": time.perf_counter() - started,
                    },
                )
        finally:
            consumer.close()
            dead.close()
            client.close()
        return self.stats


def run_live_worker(settings: Settings, stop: threading.Event | None = None) -> LiveStats:
    """Entry point for `heatreplay live-worker` and tests."""
    return LiveWorker(settings, stop=stop or threading.Event()).run()
