"""Thin wrappers over confluent-kafka: producer with per-request delivery accounting,
consumer configuration, topic administration and a bounded wait for the broker."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from app.ping import Ping
from app.settings import Settings
from app.wire import (
    ANY_PARTITION,
    Decoded,
    OutMessage,
    batched_messages,
    decode_batch,
    keyed_messages,
    ping_count,
)

log = logging.getLogger(__name__)


# how long a producer trusts the partition count it last read (batched messages only)
PARTITIONS_REFRESH_S = 30.0


class BrokerUnavailable(Exception):
    """The broker did not acknowledge every message in time (HTTP 503)."""


class ConsumerError(Exception):
    """A fatal consumer error surfaced by ``msg.error()``."""


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "compression.type": settings.kafka_compression,
        # a message that cannot be delivered within this fails, so a request always ends
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        # only failures call back: success is "flush() drained and no error was counted"
        "delivery.report.only.error": True,
        "socket.keepalive.enable": True,
        "reconnect.backoff.max.ms": 1000,
    }


# How long the broker may hold a fetch that has nothing new. The live worker's frames
# wait on it when the fleet is quiet, so it asks for 50 ms; history can wait, and on the
# dev broker every consumer at 50 ms cost ~2 us of broker CPU per ping under load (the
# broker: 27-35 % of a core at 55-60k pings/s with both at 50, 21-24 % with only the
# live worker; docs/performance.md, fifth round).
FETCH_WAIT_LIVE_MS = 50
FETCH_WAIT_DEFAULT_MS = 500
# The sink asks the broker to hold a fetch until 256 KiB (~2,000 pings) are there, or the
# wait above: a consumer that keeps up otherwise fetches every few milliseconds a few
# pings at a time. At 70k pings/s the dev broker went 34-36 % -> 27 % of a core and 70k/s
# kept up (docs/performance.md, sixth round). History waits at most the 500 ms more.
FETCH_MIN_BYTES_SINK = 256 * 1024


def consumer_config(
    settings: Settings,
    group_id: str,
    fetch_wait_max_ms: int = FETCH_WAIT_DEFAULT_MS,
    fetch_min_bytes: int = 1,
) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.kafka_session_timeout_ms // 6),
        "max.poll.interval.ms": 300_000,
        "max.partition.fetch.bytes": 32 * 1024 * 1024,
        "fetch.max.bytes": 100 * 1024 * 1024,
        "queued.min.messages": 1_000_000,
        "fetch.wait.max.ms": fetch_wait_max_ms,
        "fetch.min.bytes": fetch_min_bytes,
        "partition.assignment.strategy": "range",
        "reconnect.backoff.max.ms": 1000,
    }


class PingProducer:
    """One per process; thread-safe. ``send`` returns only when every message of the call
    is acknowledged by the broker (acks=all), else raises BrokerUnavailable."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topic = settings.topic_pings
        self._lock = threading.Lock()
        # delivery failures reported so far, by any request (only failures are reported)
        self._failure_lock = threading.Lock()
        self._failures = 0
        self._last_failure: KafkaError | None = None
        self._partition_count = (0, 0.0)  # (count, when asked), for batched messages
        self._partition_lock = threading.Lock()
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        # One delivery callback for the producer, not one per message: a per-message
        # callback cost produce() ~0.5-0.9 us more per ping (docs/performance.md,
        # seventh round)
        return Producer(
            {
                **producer_config(self.settings),
                "error_cb": self._on_error,
                "on_delivery": self._on_delivery,
            }
        )

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            with self._failure_lock:
                self._failures += 1
                self._last_failure = err

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka producer: %s", err)

    def send(self, messages: Iterable[tuple[bytes, bytes]], topic: str | None = None) -> int:
        """Produce and wait. Succeeds only if ``flush`` drained the queue and no delivery
        failed meanwhile: a failed message's report is served before ``flush`` can see
        an empty queue, so one of ours cannot go unnoticed. A failure of a concurrent
        request's message fails this call too (a 503 for pings that may have landed,
        which the API allows; failures are broker-wide events in practice)."""
        target = topic or self.topic
        return self._produce_all(target, ((key, value, ANY_PARTITION) for key, value in messages))

    def _produce_all(self, target: str, messages: Iterable[OutMessage]) -> int:
        failures_before = self._failures
        count = 0
        producer = self._producer
        produce = producer.produce
        for key, value, partition in messages:
            while True:
                try:
                    produce(target, value, key, partition)
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:
                    # a producer the broker made unusable, or a partition the topic no
                    # longer has (recreated with fewer): start afresh, the partition
                    # count read again, rather than fail until the refresh
                    self._replace(producer)
                    raise BrokerUnavailable(str(exc)) from None
            count += 1
        self._settle(producer, failures_before)
        return count

    def send_pings(self, pings: Sequence[Ping]) -> int:
        """Produce validated pings in the topic's configured form (app/wire.py) and wait
        for the broker's acknowledgement of all of them; returns how many pings."""
        per_message = self.settings.kafka_pings_per_message
        if per_message == 1:
            messages = keyed_messages(pings)
        else:
            messages = batched_messages(pings, self._partitions(), per_message)
        self._produce_all(self.topic, messages)
        return len(pings)

    def _partitions(self) -> int:
        """The topic's partition count, asked of the broker at most every
        PARTITIONS_REFRESH_S (a topic given more partitions is seen within that)."""
        count, asked = self._partition_count
        if count and time.monotonic() - asked < PARTITIONS_REFRESH_S:
            return count
        with self._partition_lock:  # one request asks; the others take its answer
            count, asked = self._partition_count
            now = time.monotonic()
            if count and now - asked < PARTITIONS_REFRESH_S:
                return count
            return self._read_partitions(count, now)

    def _read_partitions(self, count: int, now: float) -> int:
        try:
            meta = self._producer.list_topics(self.topic, timeout=self.settings.produce_timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailable(f"topic metadata: {exc}") from None
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            if count:
                return count  # keep the last known count through a metadata hiccup
            reason = topic.error if topic is not None else "no such topic"
            raise BrokerUnavailable(f"topic {self.topic}: {reason}")
        self._partition_count = (len(topic.partitions), now)
        return len(topic.partitions)

    def _settle(self, producer: Producer, failures_before: int) -> None:
        """Wait for every queued message's acknowledgement; raise if one failed."""
        remaining = producer.flush(self.settings.produce_timeout_s + 2.0)
        failure = self._last_failure if self._failures != failures_before else None
        if failure is not None or remaining:
            unacked = f"{remaining} messages unacknowledged"
            reason = failure.str() if failure is not None else unacked
            self._replace(producer)
            raise BrokerUnavailable(reason)

    def _replace(self, failed: Producer) -> None:
        """After a failure start afresh: an idempotent producer whose broker lost its
        producer id (a restarted in-memory broker) never recovers, a new one does."""
        with self._lock:
            if self._producer is not failed:
                return  # a concurrent request already replaced it
            self._producer = self._new_producer()
            # the partition count read again (the last one kept for a failed read)
            self._partition_count = (self._partition_count[0], 0.0)
        failed.purge(in_queue=True, in_flight=False)
        failed.flush(0)

    def close(self) -> None:
        self._producer.flush(self.settings.produce_timeout_s)


def admin(settings: Settings, quiet: bool = False) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    if quiet:
        # a probe expects "connection refused"; librdkafka would print it to stderr
        config["log_level"] = 0
    return AdminClient(config)


def broker_reachable(settings: Settings, timeout_s: float = 2.0) -> bool:
    try:
        admin(settings, quiet=True).list_topics(timeout=timeout_s)
        return True
    except KafkaException:
        return False


def wait_for_broker(settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if broker_reachable(settings, timeout_s=min(2.0, max(0.2, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"no Kafka broker answered at {settings.kafka_bootstrap}")
        time.sleep(0.2)


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None) -> list[str]:
    """Create the pings and dead-letter topics if missing (idempotent), with
    ``TOPIC_PARTITIONS`` (pings; the dead-letter topic has 1), ``TOPIC_REPLICATION`` and
    ``TOPIC_RETENTION_MS`` / ``DLQ_RETENTION_MS``. These apply to a topic when it is
    created; for a topic that exists with another partition count, returns (and logs) a
    note saying so rather than changing it (adding partitions moves drivers' keys, an
    operator's decision)."""
    client = admin(settings)
    wanted = list(topics or (settings.topic_pings, settings.topic_dlq))
    existing = client.list_topics(timeout=10).topics
    notes = []
    pings = existing.get(settings.topic_pings)
    if settings.topic_pings in wanted and pings is not None:
        have = len(pings.partitions)
        if have != settings.topic_partitions:
            notes.append(
                f"topic {settings.topic_pings} exists with {have} partitions, not "
                f"TOPIC_PARTITIONS={settings.topic_partitions}: the setting applies when the "
                "topic is created; add partitions with the broker's tools (kafka-topics "
                "--alter --partitions N), knowing each driver's pings move partition once"
            )
            log.warning("%s", notes[-1])
    new = [
        NewTopic(
            name,
            num_partitions=settings.topic_partitions if name == settings.topic_pings else 1,
            replication_factor=settings.topic_replication,
            config={
                "retention.ms": str(
                    settings.dlq_retention_ms
                    if name == settings.topic_dlq
                    else settings.topic_retention_ms
                )
            },
        )
        for name in wanted
        if name not in existing
    ]
    if not new:
        return notes
    for name, future in client.create_topics(new, operation_timeout=10).items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            log.debug("topic %s already exists", name)
    # metadata of a new topic can lag its creation by a moment
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(name in client.list_topics(timeout=5).topics for name in wanted):
            break
        time.sleep(0.1)
    return notes


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    client = admin(settings)
    for future in client.delete_topics(list(names), operation_timeout=10).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=15)


class ProbeTimeout(Exception):
    """The broker answered neither with the message nor with the partition's end in
    time: whether the offset exists is unknown, which is not the same as "it does not"."""


class OffsetProbe:
    """Reads single messages at chosen offsets outside any group: how the workers learn
    a message's CreateTime (this broker's offsets_for_times is unreliable) and whether an
    offset still exists (its reported end offsets trail multi-message batches)."""

    def __init__(self, settings: Settings):
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.group_sink}-probe",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "max.partition.fetch.bytes": 1024 * 1024,
                "queued.min.messages": 1,
                "fetch.wait.max.ms": 50,
                # the default 1 s pause once the (tiny) queue is full made each probe 1 s
                "fetch.queue.backoff.ms": 0,
                "fetch.error.backoff.ms": 10,
                "reconnect.backoff.max.ms": 1000,
            }
        )

    def message_at(
        self, topic: str, partition: int, offset: int, timeout_s: float = 5.0
    ) -> Message | None:
        """The message at ``offset`` (or the first after it), None if there is none
        within ``timeout_s`` (the live heal then reads further back, which is safe)."""
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                for msg in self._consumer.consume(num_messages=1, timeout=left):
                    err = msg.error()
                    if err is None and (msg.offset() or 0) >= offset:
                        return msg
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        return None
            return None
        finally:
            self._consumer.unassign()

    def end_offset(self, topic: str, partition: int, timeout_s: float = 5.0) -> tuple[int, int]:
        """(low, end): the partition's first offset and the offset after its last
        message, read by fetching, not from the reported end (which trails
        multi-message batches here) nor from a fetch past the end (which this broker
        leaves unanswered). Reads from the last reported message to the partition's
        end. Raises ProbeTimeout if the broker does not get there within ``timeout_s``."""
        low, high = self.watermarks(topic, partition, timeout_s)
        self._consumer.assign([TopicPartition(topic, partition, max(low, high - 1))])
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                # a short wait per call: consume() waits for all it asked for
                for msg in self._consumer.consume(num_messages=1_000, timeout=min(left, 0.05)):
                    err = msg.error()
                    if err is not None and err.code() == KafkaError._PARTITION_EOF:
                        return low, int(msg.offset() or 0)
            raise ProbeTimeout(f"{topic}[{partition}]: its end not reached in {timeout_s} s")
        finally:
            self._consumer.unassign()

    def watermarks(self, topic: str, partition: int, timeout_s: float = 5.0) -> tuple[int, int]:
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s
        )
        return int(low), int(high)

    def close(self) -> None:
        self._consumer.close()


def consume_batch(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """One poll; returns data messages, raises on fatal errors, logs and skips the
    informational ones (partition EOF, transient transport errors)."""
    messages = consumer.consume(num_messages=max_messages, timeout=timeout_s)
    good: list[Message] = []
    for msg in messages:
        err = msg.error()
        if err is None:
            good.append(msg)
        elif err.code() == KafkaError._PARTITION_EOF:
            continue
        elif err.fatal():
            raise ConsumerError(err.str())
        else:
            log.warning("kafka consumer: %s", err)
    return good


# A gap in a partition's offsets is fetched again until it has been seen this many times
# and this long; only then is it taken for offsets that hold no message
GAP_SIGHTINGS = 3
GAP_CONFIRM_S = 0.25


class OffsetGaps:
    """Fetches again what a fetch passed over, so no message is consumed out of order or
    not at all.

    The pings topic's producers are idempotent and not transactional, so a partition's
    offsets run without holes. The dev broker (Tansu, memory storage) breaks that: with
    several producers writing one partition, a fetch may return a later producer batch
    before an earlier one is visible, and the consumer's position moves past the earlier
    one. Consumers lost whole batches that way, the live worker and the sink included
    (a batch of ~1,250 pings in most bursts of 20 s at ~400k pings/s, docs/performance.md,
    fifteenth round); read again afterwards, the offsets were all there. So a message
    whose offset is past the next one expected in its partition is dropped with the rest
    of that partition's messages in the poll, and the partition is sought back to the
    expected offset. A hole that is still there after ``GAP_SIGHTINGS`` fetches and
    ``GAP_CONFIRM_S`` is genuine (a transaction marker from another producer, a
    compacted or truncated log) and passed over with a warning. ``forget`` after
    anything that moves the position on purpose (assignment, seek)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self._next: dict[int, int] = {}  # partition -> the offset expected next
        self._holes: dict[tuple[int, int], tuple[int, float]] = {}  # -> (sightings, since)
        self.refetches = 0
        self.passed_over = 0

    def forget(self) -> None:
        self._next.clear()
        self._holes.clear()

    def check(self, messages: list[Message]) -> list[Message]:
        """``messages`` without those at or after a hole in their partition."""
        # the usual case, every offset the one due: nothing but the expectations to keep
        expected = self._next
        get = expected.get
        if self._holes:  # holes read since are forgotten
            self._holes = {k: v for k, v in self._holes.items() if get(k[0], -1) <= k[1]}
        i = 0
        for m in messages:
            part: int = m.partition()  # type: ignore[assignment]
            off: int = m.offset()  # type: ignore[assignment]
            want = get(part)
            if want is not None and off > want:
                break
            expected[part] = off + 1
            i += 1
        else:
            return messages
        return messages[:i] + self._past_a_hole(messages[i:])

    def _past_a_hole(self, messages: list[Message]) -> list[Message]:
        expected = self._next
        get = expected.get
        kept: list[Message] = []
        back: dict[int, tuple[str, int]] = {}  # partition -> (topic, offset to fetch again)
        for m in messages:
            part: int = m.partition()  # type: ignore[assignment]
            off: int = m.offset()  # type: ignore[assignment]
            if back and part in back:
                continue
            want = get(part)
            if want is not None and off > want and not self._genuine(part, want, off):
                back[part] = (m.topic(), want)  # type: ignore[assignment]
                continue
            expected[part] = off + 1
            kept.append(m)
        for part, (topic, offset) in back.items():
            self.refetches += 1
            log.info("kafka: %s[%d] skipped from offset %d; fetching again", topic, part, offset)
            try:
                self.consumer.seek(TopicPartition(topic, part, offset))
            except KafkaException as exc:  # no longer assigned: its next owner reads it
                log.warning("kafka: cannot seek %s[%d] back to %d: %s", topic, part, offset, exc)
                expected.pop(part, None)
        return kept

    def _genuine(self, part: int, want: int, off: int) -> bool:
        now = time.monotonic()
        sightings, since = self._holes.get((part, want), (0, now))
        sightings += 1
        if sightings < GAP_SIGHTINGS or now - since < GAP_CONFIRM_S:
            self._holes[(part, want)] = (sightings, since)
            return False
        del self._holes[(part, want)]
        self.passed_over += 1
        log.warning(
            "kafka: partition %d holds no messages at offsets %d-%d (seen %d times); going on",
            part,
            want,
            off - 1,
            sightings,
        )
        return True


@dataclass
class Batch:
    """Consumed messages, each decoded (app/wire.py), and how many pings they hold."""

    messages: list[Message] = field(default_factory=list)
    decoded: list[Decoded] = field(default_factory=list)
    pings: int = 0

    def add(self, other: Batch, messages: int, pings: int) -> None:
        """The first ``messages`` of ``other``, which hold ``pings`` pings."""
        self.messages += other.messages[:messages]
        self.decoded += other.decoded[:messages]
        self.pings += pings


class BatchCollector:
    """Collects a consumer's batches: messages until they hold ``max_pings`` pings or
    ``wait_s`` has passed (or, with ``until_idle``, a poll brings nothing new), decoded
    as they arrive.

    The bound counts pings, not messages. A poll returns when it has the number of
    messages asked for or its time is up, so it is asked for the messages that should
    hold the pings still wanted, by the pings per message seen so far: asked for pings'
    worth of messages of several pings each, every poll waited out ``wait_s`` with a
    backlog already fetched."""

    def __init__(
        self,
        consumer: Consumer,
        max_pings: int,
        wait_s: float,
        stop: threading.Event,
        until_idle: bool = False,
        pings_per_message: int = 1,
    ) -> None:
        self.consumer = consumer
        self.max_pings = max_pings
        self.wait_s = wait_s
        self.stop = stop
        self.until_idle = until_idle
        # (messages, pings) consumed lately, for the pings per message to expect; until
        # the first poll, what this deployment's producers are set to write
        self._seen = (1, pings_per_message)
        self._carry: Batch | None = None
        self.gaps = OffsetGaps(consumer)

    def forget(self) -> None:
        """The consumer's position was set on purpose (an assignment, a seek): the next
        offsets expected are unknown again."""
        self.gaps.forget()

    def collect(self) -> Batch:
        batch = Batch()
        carry, self._carry = self._carry, None
        if carry is not None:  # what the last batch could not take, first
            if carry.pings > self.max_pings and self._keep_back(batch, carry):
                return batch
            batch = carry
        deadline = time.monotonic() + self.wait_s
        while batch.pings < self.max_pings and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            messages, pings = self._seen
            wanted = self.max_pings - batch.pings
            if pings > messages:
                wanted = max(1, wanted * messages // pings)
            polled_messages = consume_batch(self.consumer, wanted, left)
            more = self.gaps.check(polled_messages)
            if not more:
                if not polled_messages and self.until_idle and batch.messages:
                    break
                continue
            decoded = decode_batch(more)
            count = ping_count(decoded)
            # the recent past counts: the last ~100k messages
            messages, pings = self._seen
            if messages > 100_000:
                messages, pings = messages // 2, pings // 2
            self._seen = (messages + len(more), pings + count)
            polled = Batch(more, decoded, count)
            if batch.pings + count > self.max_pings and self._keep_back(batch, polled):
                break
            batch.add(polled, len(more), count)
        return batch

    def _keep_back(self, batch: Batch, polled: Batch) -> bool:
        """Messages that would take ``batch`` past ``max_pings``: add those that fit (at
        least one message per batch) and keep the rest, in order, for the next batch;
        True once some were kept back. Polls ask for messages by the average pings per
        message, so a run of large messages after small ones (a backfill after live
        traffic) could otherwise put millions of pings in one transaction."""
        room = self.max_pings - batch.pings
        taken = used = 0
        for item in polled.decoded:
            size = len(item) if isinstance(item, list) else 1
            if size > room and (taken or batch.messages):
                break
            room -= size
            used += size
            taken += 1
        if taken == len(polled.messages):
            return False
        batch.add(polled, taken, used)
        self._carry = Batch(polled.messages[taken:], polled.decoded[taken:], polled.pings - used)
        return True
