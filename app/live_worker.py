"""Live counter worker: its own consumer group, keeps the live heat in Redis.

Per batch: decode once, keep each driver's newest ping, one Lua call applies it (and
expires quiet drivers), one PUBLISH tells the web processes; then the Kafka offsets are
committed — after the Redis write they cover. Replaying is harmless (the script ignores
what it has seen), which is what lets the worker heal by rewinding (app/live_heal.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from app import metrics
from app.backoff import Backoff
from app.dead_letter import DeadLetters
from app.kafka_io import FETCH_WAIT_LIVE_MS, BatchCollector, BrokerUnavailable, consumer_config
from app.live_counts import LiveCounts
from app.live_heal import rewind_offsets, state_lost
from app.ping import Ping
from app.settings import Settings
from app.wire import pings_and_bad

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class LiveStats:
    batches: int = 0
    pings: int = 0
    changed: int = 0
    dead_letters: int = 0
    heals: int = 0
    redis_retries: int = 0


RETRYABLE_REDIS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
LIVE_CLIENT_NAME = "heatreplay-live"


@dataclass
class LiveWorker:
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    stats: LiveStats = field(default_factory=LiveStats)
    # told when the position moves on purpose (assignment, heal), so that it does not
    # take the move for a fetch that passed messages over (app.kafka_io.OffsetGaps)
    _collector: BatchCollector | None = field(default=None, init=False, repr=False)

    def run(self) -> LiveStats:
        """Consume until ``stop`` is set. Each batch is applied to Redis (waiting out a
        Redis outage) before its offsets are committed; on assignment, and whenever
        Redis turns out to have lost the live keys, the last window is replayed."""
        settings = self.settings
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=5,
            socket_connect_timeout=3,
            client_name=LIVE_CLIENT_NAME,
        )
        live = LiveCounts(client, settings)
        consumer = Consumer(consumer_config(settings, settings.group_live, FETCH_WAIT_LIVE_MS))
        dead = DeadLetters(settings, source="live_worker")
        # batch figures leave in the background: the batch loop never waits on them
        figures = metrics.CounterBuffer(client, settings.redis_key_prefix)
        collector = self._collector = BatchCollector(
            consumer,
            settings.live_batch_max,
            settings.live_batch_wait_s,
            self.stop,
            until_idle=True,
            pings_per_message=settings.kafka_pings_per_message,
        )
        consumer.subscribe([settings.topic_pings], on_assign=self._on_assign)
        try:
            while not self.stop.is_set():
                if self._redis(lambda: state_lost(client, settings)) and self._heal(consumer):
                    continue  # the batch in hand will be read again after the rewind
                batch = collector.collect()
                messages = batch.messages
                if not messages:
                    continue
                pings, bad = pings_and_bad(messages, batch.decoded)
                if bad and not self._dead_letter(dead, bad):
                    break  # stopping while the broker is down: nothing committed
                started = time.perf_counter()
                changed = self._redis(partial(_apply_now, live, pings))
                if changed is None:
                    break  # stopping while Redis is down: the batch is read again later
                self.stats.changed += changed
                self.stats.batches += 1
                self.stats.pings += len(pings)
                self._commit(consumer, messages)
                figures.add(
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
            figures.close()
            client.close()
        return self.stats

    def _redis(self, call: Callable[[], T]) -> T | None:
        """Run a Redis call, waiting out an outage with backoff; None once stopping."""
        backoff = Backoff(self.stop, cap_s=2.0)
        while True:
            try:
                return call()
            except RETRYABLE_REDIS as exc:
                self.stats.redis_retries += 1
                log.warning("live: Redis unavailable (%s); retrying", exc)
                if not backoff.wait():
                    return None

    def _dead_letter(self, dead: DeadLetters, bad: list[tuple[Message, str]]) -> bool:
        backoff = Backoff(self.stop)
        while True:
            try:
                dead.send(bad)
                self.stats.dead_letters += len(bad)
                return True
            except BrokerUnavailable as exc:
                log.warning("live: dead letters not acknowledged (%s); retrying", exc)
                if not backoff.wait():
                    return False

    def _commit(self, consumer: Consumer, messages: list[Message]) -> None:
        # the next offset per partition; no helper calls or max() per message, as this
        # runs for every ping (a consumed message has both; the stubs allow None)
        offsets: dict[int, int] = {}
        get = offsets.get
        for m in messages:
            part: int = m.partition()  # type: ignore[assignment]
            off: int = m.offset()  # type: ignore[assignment]
            if off >= get(part, 0):
                offsets[part] = off + 1
        topic = self.settings.topic_pings
        try:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # replaying an applied batch changes nothing, so a lost commit costs only time
            log.warning("live: Kafka commit failed (%s)", exc)

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """Start each partition at the earlier of its committed offset and the start of
        the last live window: a restarted worker (its Redis state possibly gone with it)
        rebuilds the window, and one that was down longer misses nothing."""
        now_ms = int(time.time() * 1000)
        rewind = rewind_offsets(self.settings, [p.partition for p in parts], now_ms)
        try:
            committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        except KafkaException as exc:
            log.warning("live: committed offsets unknown (%s)", exc)
            committed = {}
        for p in parts:
            start = rewind.get(p.partition)
            done = committed.get(p.partition, OFFSET_INVALID)
            if start is None or 0 <= done < start:
                start = done if done >= 0 else OFFSET_BEGINNING
            p.offset = start
        log.info("live assigned %s", {p.partition: p.offset for p in parts})
        consumer.assign(parts)
        if self._collector is not None:
            self._collector.forget()

    def _heal(self, consumer: Consumer) -> bool:
        """Redis lost the live keys: rewind every assigned partition by one window."""
        assigned = consumer.assignment()
        if not assigned:
            return False  # the assignment callback rewinds anyway
        rewind = rewind_offsets(
            self.settings, [tp.partition for tp in assigned], int(time.time() * 1000)
        )
        for part, offset in rewind.items():
            try:
                consumer.seek(TopicPartition(self.settings.topic_pings, part, offset))
            except KafkaException as exc:
                log.warning("live heal: seek %d failed: %s", part, exc)
        if self._collector is not None:
            self._collector.forget()
        self.stats.heals += 1
        log.warning("live: Redis lost the live state; replaying the last window %s", rewind)
        return True


def _apply_now(live: LiveCounts, pings: list[Ping]) -> int:
    # the clock is read per attempt: after waiting out an outage the window has moved
    return live.apply(pings, now_ms=int(time.time() * 1000))


def run_live_worker(settings: Settings, stop: threading.Event | None = None) -> LiveStats:
    """Entry point for `heatreplay live-worker` and tests."""
    return LiveWorker(settings, stop=stop or threading.Event()).run()
