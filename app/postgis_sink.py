"""PostGIS sink: every ping from Kafka into the partitioned ``pings`` table, exactly once.

Per batch (up to SINK_BATCH_MAX pings or SINK_BATCH_WAIT_S): decode once, build one
binary COPY stream by hand (EWKB points), and in ONE transaction write the rows, the
minute rollup and the next offset per partition (``sink_offsets``). Only after that
commit is the offset committed to Kafka, and on (re)assignment the sink seeks to the
offsets stored in PostgreSQL, so a crash at any instant neither loses nor doubles a ping.
Undecodable messages go to the dead-letter topic before the offsets that cover them.

Two batches are in hand at a time: a writer thread writes batch n while the run loop
collects, decodes and encodes batch n+1 (app/sink_batch.py), so PostgreSQL, which spends
most of a batch's time on the spatial index, is not left idle while Python works. The
writer takes the batches one at a time, in order; the Kafka consumer stays on the run
loop's thread, and a (re)assignment first waits for the batch being written, so it
reads the offsets that batch stored (docs/performance.md, eleventh round).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from datetime import date

import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from app import metrics
from app.backoff import Backoff
from app.copy_rows import COPY_SQL, HEADER, TRAILER
from app.db import PARTITION_LOCK_TIMEOUT
from app.dead_letter import DeadLetters
from app.geom_index import GeomIndexer
from app.kafka_io import (
    FETCH_MIN_BYTES_SINK,
    Batch,
    BatchCollector,
    BrokerUnavailable,
    OffsetProbe,
    ProbeTimeout,
    consumer_config,
)
from app.settings import Settings
from app.sink_batch import PreparedBatch, prepare
from replay.rollups import MinuteRollups, Pairs

log = logging.getLogger(__name__)

COPY_WRITE_BYTES = 256 * 1024  # the rows go to PostgreSQL in pieces of this


def copy_rows(cur: psycopg.Cursor, rows: bytes) -> None:
    """COPY encoded rows (app/copy_rows.py) into ``pings``."""
    with cur.copy(COPY_SQL) as copy:
        copy.write(HEADER)
        view = memoryview(rows)
        for start in range(0, len(view), COPY_WRITE_BYTES):
            copy.write(view[start : start + COPY_WRITE_BYTES])
        copy.write(TRAILER)


@dataclass
class SinkStats:
    batches: int = 0  # written
    batches_collected: int = 0  # written, being written, or waiting for the writer
    rows: int = 0
    dead_letters: int = 0
    last_batch_rows: int = 0
    last_commit_ms: float = 0.0
    partitions_created: int = 0
    db_retries: int = 0
    abandoned_batches: int = 0
    topic_resets: int = 0


# The server went away, the connection broke, or a lock conflict rolled us back: the
# batch is still in memory and the fence makes a second attempt safe.
RETRYABLE_DB = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass
class PostgisSink:
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    stats: SinkStats = field(default_factory=SinkStats)
    # test seam: called after the PostgreSQL commit and before the Kafka commit
    after_db_commit: Callable[[int], None] | None = None
    _days: set[date] = field(default_factory=set)
    _redis: redis.Redis | None = None
    _metrics: metrics.CounterBuffer | None = None
    _conn: psycopg.Connection | None = None
    _written: dict[int, int] = field(default_factory=dict)
    _rollups: MinuteRollups = field(default_factory=MinuteRollups)
    # the batch the writer thread has in hand (None: the writer is idle)
    _pending: Future[bool] | None = None
    # told when an assignment sets the position (app.kafka_io.OffsetGaps)
    _collector: BatchCollector | None = None

    def run(self, max_batches: int | None = None) -> SinkStats:
        """Consume until ``stop`` is set (or ``max_batches`` batches were written).

        On stop the batch being collected is still written (or, if PostgreSQL is down,
        abandoned: its offsets were never stored, so the next run reads it again), the
        last offsets are committed synchronously and the consumer leaves its group. A
        write that fails for good (not an outage) ends the run with its exception."""
        settings = self.settings
        consumer = Consumer(
            consumer_config(settings, settings.group_sink, fetch_min_bytes=FETCH_MIN_BYTES_SINK)
        )
        dead = DeadLetters(settings, source="postgis_sink")
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        try:
            collector = self._collector = BatchCollector(
                consumer,
                settings.sink_batch_max,
                settings.sink_batch_wait_s,
                self.stop,
                pings_per_message=settings.kafka_pings_per_message,
            )
            consumer.subscribe([settings.topic_pings], on_assign=self._on_assign)
            while not self.stop.is_set():
                if max_batches is not None and self.stats.batches_collected >= max_batches:
                    break
                batch = collector.collect()  # while the writer writes the one before
                self.stats.batches_collected += 1 if batch.messages else 0
                written = self._pending is not None and self._pending.done()
                if written and not self._settle(consumer):
                    break  # the batch in hand was given up (see _settle)
                if batch.messages:
                    # prepared here, while the writer may still have the last batch
                    prepared = prepare(batch)
                    if not self._settle(consumer):  # the writer takes one at a time
                        break
                    self._pending = writer.submit(self._write_retrying, batch, prepared, dead)
            self._settle(consumer)
            self._commit_kafka(consumer, asynchronous=False)
        except BaseException:
            # the run ends: a batch still in hand is written, or given up unstored
            # rather than retried against an outage for ever
            self.stop.set()
            raise
        finally:
            writer.shutdown(wait=True)
            consumer.close()
            self._drop_conn()
            dead.close()
            if self._metrics is not None:
                self._metrics.close()
            if self._redis is not None:
                self._redis.close()
        return self.stats

    def _settle(self, consumer: Consumer) -> bool:
        """Wait for the batch in hand (raising what its write raised), then commit to
        Kafka what PostgreSQL now holds. Run-loop thread only: the consumer's.

        False if the writer gave that batch up (stop came during an outage): then no
        later batch may be written, or its offsets would pass over the one given up."""
        pending, self._pending = self._pending, None
        if pending is None:
            return True
        if not pending.result():
            return False
        self._commit_kafka(consumer, asynchronous=True)
        return True

    def _db(self) -> psycopg.Connection | None:
        """The connection, reconnecting with backoff; None once stop is set."""
        backoff = Backoff(self.stop)
        while self._conn is None or self._conn.closed or self._conn.broken:
            self._drop_conn()
            try:
                self._conn = psycopg.connect(
                    self.settings.database_url,
                    connect_timeout=5,
                    application_name=SINK_APPLICATION_NAME,
                )
            except psycopg.OperationalError as exc:
                self.stats.db_retries += 1
                log.warning("sink: PostgreSQL unreachable (%s); retrying", exc)
                if not backoff.wait():
                    return None
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        # the server we reconnect to may not be the one that has those pairs (a restore,
        # a fail-over to a lagging standby): start the memory afresh, the key decides
        self._rollups.forget()

    def _write_retrying(self, batch: Batch, prepared: PreparedBatch, dead: DeadLetters) -> bool:
        """Write one batch, waiting out PostgreSQL (or dead-letter broker) outages.
        False if stop came first: the batch is abandoned, nothing of it was committed.
        Runs on the writer thread."""
        backoff = Backoff(self.stop)
        remade_days = False
        while True:
            conn = self._db()
            if conn is None:
                break
            try:
                next_offsets, rows, bad = self._write(conn, batch, prepared, dead)
            except RETRYABLE_DB as exc:
                self.stats.db_retries += 1
                log.warning("sink: batch of %d not written (%s); retrying", batch.pings, exc)
                self._drop_conn()
            except BrokerUnavailable as exc:
                log.warning("sink: dead letters not acknowledged (%s); retrying", exc)
            except psycopg.errors.CheckViolation:
                # "no partition of relation pings found for row": a day this process
                # created was dropped since (retention, an operator). Forget the days
                # and ensure them again, once: the error again after that is real.
                if remade_days or not self._days:
                    raise
                log.warning("sink: a day partition it had made is gone; making it again")
                remade_days = True
                self._days.clear()
                self._drop_conn()
                continue
            else:
                self._after_write(next_offsets, rows, bad)
                return True
            if not backoff.wait():
                break
        self.stats.abandoned_batches += 1
        log.warning("sink: stopping; batch of %d abandoned (re-read on restart)", batch.pings)
        return False

    def _after_write(self, next_offsets: dict[int, int], rows: int, bad: int) -> None:
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.dead_letters += bad
        self.stats.last_batch_rows = rows
        self.report(rows, bad)
        if self.after_db_commit is not None:
            self.after_db_commit(rows)
        self._written.update(next_offsets)  # committed to Kafka by the run loop

    def _commit_kafka(self, consumer: Consumer, asynchronous: bool) -> None:
        """A convenience for lag monitoring: PostgreSQL holds the real position."""
        if not self._written:
            return
        topic = self.settings.topic_pings
        offsets = [TopicPartition(topic, p, o) for p, o in self._written.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("sink: Kafka commit failed (%s); PostgreSQL keeps the position", exc)

    def report(self, rows: int, dead: int) -> None:
        """Batch figures for /metrics (best effort, sent by a background thread)."""
        if self._metrics is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            self._metrics = metrics.CounterBuffer(self._redis, self.settings.redis_key_prefix)
        self._metrics.add(
            {
                "sink_batches": 1,
                "sink_rows": rows,
                "sink_dead_letters": dead,
                "sink_commit_seconds": self.stats.last_commit_ms / 1000,
            },
        )

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """Start every partition where PostgreSQL says this group stopped; a partition
        it never wrote starts at the beginning (Kafka's committed offset is not trusted).
        Called inside the run loop's poll: the batch in hand is written first (or given
        up on stop), so the offsets read include it and the connection is free."""
        pending = self._pending
        if pending is not None:
            wait_for([pending])
            if pending.exception() is not None or not pending.result():
                return  # the run loop raises that failure, or stops (it was given up)
        backoff = Backoff(self.stop)
        stored: dict[int, int] | None = None
        while stored is None:
            conn = self._db()
            if conn is None:
                return  # stopping: the run loop exits without writing
            try:
                stored = self.stored_offsets(conn, [p.partition for p in parts])
            except RETRYABLE_DB as exc:
                log.warning("sink: cannot read stored offsets (%s); retrying", exc)
                self._drop_conn()
                if not backoff.wait():
                    return
        stored = self._check_topic_reset(stored)
        for p in parts:
            p.offset = stored.get(p.partition, OFFSET_BEGINNING)
        # the position PostgreSQL holds is what Kafka should report too, also for a
        # partition this process ends up writing nothing to (committed on the next write
        # and at shutdown)
        self._written = {p.partition: stored[p.partition] for p in parts if p.partition in stored}
        log.info("sink assigned %s", {p.partition: p.offset for p in parts})
        consumer.assign(parts)
        if self._collector is not None:
            self._collector.forget()

    def _check_topic_reset(self, stored: dict[int, int]) -> dict[int, int]:
        """A stored position past the topic's end means the topic was recreated (the
        in-memory dev broker forgets everything on restart). Seeking there would skip
        every new message silently, so start that partition again from its beginning:
        its new messages are pings PostgreSQL has never seen. Only the partition's end
        as read by fetching counts (``OffsetProbe.end_offset``): a probe the broker
        leaves unanswered (a stalled broker) is asked again, since starting over a
        partition that was not recreated writes all of it a second time."""
        topic = self.settings.topic_pings
        probe = OffsetProbe(self.settings)
        try:
            for part, offset in list(stored.items()):
                if offset <= 0:
                    continue
                bounds = self._partition_bounds(probe, part)
                if self.stop.is_set():
                    return stored  # stopping: nothing is written
                if bounds is None or offset <= bounds[1]:
                    continue
                low = bounds[0]
                log.error(
                    "sink: %s[%d] ends before the stored offset %d (topic recreated?); "
                    "restarting it at %d",
                    topic,
                    part,
                    offset,
                    low,
                )
                self._rebase(part, low)
                stored[part] = low
                self.stats.topic_resets += 1
        finally:
            probe.close()
        return stored

    def _partition_bounds(self, probe: OffsetProbe, partition: int) -> tuple[int, int] | None:
        """(low, end) of the partition, asked again while the broker leaves the probe
        unanswered; None if it has no watermarks for it, or once stop is set."""
        backoff = Backoff(self.stop)
        while True:
            try:
                return probe.end_offset(self.settings.topic_pings, partition)
            except KafkaException as exc:
                log.warning("sink: no watermarks for partition %d: %s", partition, exc)
                return None
            except ProbeTimeout as exc:
                log.warning("sink: cannot tell whether %s; asking again", exc)
                if not backoff.wait():
                    return None

    def _rebase(self, partition: int, offset: int) -> None:
        conn = self._db()
        if conn is None:
            return
        with conn.transaction():
            conn.execute(
                "UPDATE sink_offsets SET next_offset = %s, updated_at = now() "
                "WHERE consumer_group = %s AND topic = %s AND partition = %s",
                (offset, self.settings.group_sink, self.settings.topic_pings, partition),
            )

    def stored_offsets(self, conn: psycopg.Connection, partitions: list[int]) -> dict[int, int]:
        rows = conn.execute(
            "SELECT partition, next_offset FROM sink_offsets "
            "WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
            (self.settings.group_sink, self.settings.topic_pings, partitions),
        ).fetchall()
        conn.commit()
        return {int(p): int(o) for p, o in rows}

    def _ensure_partitions(self, conn: psycopg.Connection, days: frozenset[date]) -> None:
        for day in sorted(days - self._days):
            # a busy pings (a long reader) makes this fail after the timeout instead of
            # queueing every query behind the lock: retried with the batch (RETRYABLE_DB)
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (PARTITION_LOCK_TIMEOUT,))
            created = conn.execute(
                "SELECT heatreplay_ensure_day_partition(%s, %s)",
                (day, self.settings.geom_index == "immediate"),
            ).fetchone()
            conn.commit()
            if created and created[0]:
                self.stats.partitions_created += 1
            self._days.add(day)

    def _write(
        self, conn: psycopg.Connection, batch: Batch, prepared: PreparedBatch, dead: DeadLetters
    ) -> tuple[dict[int, int], int, int]:
        """One transaction: rows, rollups and the next offsets. Returns those offsets,
        the rows written and the messages dead-lettered."""
        self._ensure_partitions(conn, prepared.days)
        group, topic = self.settings.group_sink, self.settings.topic_pings
        parts = sorted(prepared.first)
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            # Lock this group's offset rows: a member that lost the partition in a
            # rebalance but is still mid-batch waits here, then writes only what the
            # new owner has not (fencing by offset, not by trust). The same fence makes
            # a retry after a lost connection safe whether or not the commit landed.
            cur.executemany(
                "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, 0) ON CONFLICT DO NOTHING",
                [(group, topic, part) for part in parts],
            )
            cur.execute(
                "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s "
                "AND topic = %s AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
                (group, topic, parts),
            )
            floor = {int(part): int(off) for part, off in cur.fetchall()}
            if not prepared.past(floor):  # some of it is stored already: only the rest
                prepared = prepare(batch, floor)
            taken = prepared.next_offsets
            next_offsets = {p: max(off, taken.get(p, 0)) for p, off in floor.items()}
            pairs: Pairs = {}
            if prepared.bad:
                # before the offsets that cover them; a retried batch may send them
                # twice (dead letters are at least once, rows exactly once)
                dead.send(prepared.bad)
            if prepared.pings:
                copy_rows(cur, prepared.rows)
                pairs = self._rollups.write_counted(cur, prepared.per_minute, prepared.pairs)
            cur.executemany(
                "UPDATE sink_offsets SET next_offset = %s, updated_at = now() "
                "WHERE consumer_group = %s AND topic = %s AND partition = %s",
                [(off, group, topic, part) for part, off in next_offsets.items()],
            )
        self._rollups.committed(pairs)
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        return next_offsets, len(prepared.pings), len(prepared.bad)


SINK_APPLICATION_NAME = "heatreplay-sink"


def run_sink(settings: Settings, stop: threading.Event | None = None) -> SinkStats:
    """Entry point for `heatreplay sink` and tests: the sink, and beside it the builder
    of day partitions' spatial indexes (app/geom_index.py)."""
    stop = stop or threading.Event()
    indexer = GeomIndexer(settings, stop)
    indexer.start()
    try:
        return PostgisSink(settings, stop=stop).run()
    finally:
        stop.set()  # the sink is done, so is its builder (a build under way is cut off
        indexer.join(timeout=1.0)  # with the process and redone by the next pass)
