"""PostGIS sink: every ping from Kafka into the partitioned ``pings`` table, exactly once.

Per batch (up to SINK_BATCH_MAX messages or SINK_BATCH_WAIT_S): decode once, build one
binary COPY stream by hand (EWKB points), and in ONE transaction write the rows, the
minute rollup and the next offset per partition (``sink_offsets``). Only after that
commit is the offset committed to Kafka, and on (re)assignment the sink seeks to the
offsets stored in PostgreSQL, so a crash at any instant neither loses nor doubles a ping.
Undecodable messages go to the dead-letter topic before the offsets that cover them.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import geohash
import msgspec
import psycopg
import redis
from confluent_kafka import Consumer, Message, TopicPartition

from app import metrics
from app.dead_letter import DeadLetters
from app.kafka_io import consume_batch, consumer_config
from app.ping import Ping, wire_decoder
from app.settings import Settings
from replay.rollups import write_rollups

log = logging.getLogger(__name__)

PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 in Unix ms: PostgreSQL's timestamp epoch
COPY_SQL = (
    "COPY pings (ts, driver_id, geom, geohash, speed_kmh, heading) FROM STDIN (FORMAT BINARY)"
)
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
# field count, ts (len + int64 us), then EWKB point: little-endian, type|SRID flag, srid, x, y
_ROW_START = struct.Struct("!hiq")
_POINT = struct.Struct("!i").pack(25) + b"\x01" + struct.pack("<II", 0x20000001, 4326)
_XY = struct.Struct("<dd")
_FLOAT4 = struct.Struct("!if")
_NULL = struct.pack("!i", -1)
_LEN = struct.Struct("!i")
_batch_decoder = msgspec.json.Decoder(list[Ping])


def encode_copy(pings: Sequence[Ping]) -> bytes:
    """The binary COPY stream for ``pings`` (geohash precision 8 computed here)."""
    parts: list[bytes] = [_HEADER]
    append = parts.append
    encode_gh = geohash.encode
    for p in pings:
        driver = p.driver_id.encode()
        gh = encode_gh(p.lat, p.lon, 8).encode()
        append(_ROW_START.pack(6, 8, (p.ts - PG_EPOCH_MS) * 1000))
        append(_LEN.pack(len(driver)))
        append(driver)
        append(_POINT)
        append(_XY.pack(p.lon, p.lat))
        append(_LEN.pack(len(gh)))
        append(gh)
        append(_NULL if p.speed_kmh is None else _FLOAT4.pack(4, p.speed_kmh))
        append(_NULL if p.heading is None else _FLOAT4.pack(4, p.heading))
    append(_TRAILER)
    return b"".join(parts)


def decode_batch(messages: Sequence[Message]) -> list[Ping | str]:
    """Decode all values at once; on failure decode one by one. Each item is the Ping
    or, for a message that cannot be decoded, the reason."""
    values = [m.value() or b"" for m in messages]
    try:
        return list(_batch_decoder.decode(b"[" + b",".join(values) + b"]"))
    except msgspec.DecodeError:
        pass
    out: list[Ping | str] = []
    for value in values:
        try:
            out.append(wire_decoder.decode(value))
        except msgspec.DecodeError as exc:
            out.append(str(exc))
    return out


@dataclass
class SinkStats:
    batches: int = 0
    rows: int = 0
    dead_letters: int = 0
    last_batch_rows: int = 0
    last_commit_ms: float = 0.0
    partitions_created: int = 0


@dataclass
class PostgisSink:
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    stats: SinkStats = field(default_factory=SinkStats)
    # test seam: called after the PostgreSQL commit and before the Kafka commit
    after_db_commit: Callable[[int], None] | None = None
    _days: set[date] = field(default_factory=set)
    _redis: redis.Redis | None = None

    def run(self, max_batches: int | None = None) -> SinkStats:
        """Consume until ``stop`` is set (or ``max_batches`` batches were written)."""
        settings = self.settings
        consumer = Consumer(consumer_config(settings, settings.group_sink))
        conn = psycopg.connect(settings.database_url, connect_timeout=5)
        dead = DeadLetters(settings, source="postgis_sink")
        try:
            consumer.subscribe(
                [settings.topic_pings],
                on_assign=lambda c, parts: self._on_assign(conn, c, parts),
            )
            while not self.stop.is_set():
                if max_batches is not None and self.stats.batches >= max_batches:
                    break
                messages = self._collect(consumer)
                if messages:
                    conn = self._write(conn, consumer, messages, dead)
        finally:
            consumer.close()
            conn.close()
            dead.close()
        return self.stats

    def _collect(self, consumer: Consumer) -> list[Message]:
        settings = self.settings
        deadline = time.monotonic() + settings.sink_batch_wait_s
        batch: list[Message] = []
        while len(batch) < settings.sink_batch_max and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batch += consume_batch(consumer, settings.sink_batch_max - len(batch), left)
        return batch

    def report(self, rows: int, dead: int) -> None:
        """Batch figures for /metrics (best effort, one pipeline per batch)."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2)
        metrics.incr(
            self._redis,
            self.settings.redis_key_prefix,
            {
                "sink_batches": 1,
                "sink_rows": rows,
                "sink_dead_letters": dead,
                "sink_commit_seconds": self.stats.last_commit_ms / 1000,
            },
        )

    def _on_assign(
        self, conn: psycopg.Connection, consumer: Consumer, parts: list[TopicPartition]
    ) -> None:
        stored = self.stored_offsets(conn, [p.partition for p in parts])
        for p in parts:
            if p.partition in stored:
                p.offset = stored[p.partition]
        log.info("sink assigned %s", {p.partition: p.offset for p in parts})
        consumer.assign(parts)

    def stored_offsets(self, conn: psycopg.Connection, partitions: list[int]) -> dict[int, int]:
        rows = conn.execute(
            "SELECT partition, next_offset FROM sink_offsets "
            "WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
            (self.settings.group_sink, self.settings.topic_pings, partitions),
        ).fetchall()
        conn.commit()
        return {int(p): int(o) for p, o in rows}

    def _ensure_partitions(self, conn: psycopg.Connection, pings: Sequence[Ping]) -> None:
        days = {
            (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=p.ts)).date() for p in pings
        } - self._days
        for day in sorted(days):
            created = conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (day,)).fetchone()
            conn.commit()
            if created and created[0]:
                self.stats.partitions_created += 1
            self._days.add(day)

    def _write(
        self,
        conn: psycopg.Connection,
        consumer: Consumer,
        messages: list[Message],
        dead: DeadLetters,
    ) -> psycopg.Connection:
        decoded = decode_batch(messages)
        self._ensure_partitions(conn, [p for p in decoded if isinstance(p, Ping)])
        group, topic = self.settings.group_sink, self.settings.topic_pings
        parts = sorted({m.partition() for m in messages})
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            # Lock this group's offset rows: a member that lost the partition in a
            # rebalance but is still mid-batch waits here, then writes only what the
            # new owner has not (fencing by offset, not by trust).
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
            pings: list[Ping] = []
            bad: list[tuple[Message, str]] = []
            next_offsets = dict(floor)
            for msg, item in zip(messages, decoded, strict=True):
                offset = msg.offset()
                if offset < floor[msg.partition()]:
                    continue  # already written by this group
                if isinstance(item, Ping):
                    pings.append(item)
                else:
                    bad.append((msg, item))
                if offset + 1 > next_offsets[msg.partition()]:
                    next_offsets[msg.partition()] = offset + 1
            if bad:
                dead.send(bad)
                self.stats.dead_letters += len(bad)
            if pings:
                with cur.copy(COPY_SQL) as copy:
                    copy.write(encode_copy(pings))
                write_rollups(cur, pings)
            cur.executemany(
                "UPDATE sink_offsets SET next_offset = %s, updated_at = now() "
                "WHERE consumer_group = %s AND topic = %s AND partition = %s",
                [(off, group, topic, part) for part, off in next_offsets.items()],
            )
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        self.stats.batches += 1
        self.stats.rows += len(pings)
        self.stats.last_batch_rows = len(pings)
        self.report(len(pings), len(bad))
        if self.after_db_commit is not None:
            self.after_db_commit(len(pings))
        consumer.commit(
            offsets=[TopicPartition(topic, part, off) for part, off in next_offsets.items()],
            asynchronous=True,
        )
        return conn


def run_sink(settings: Settings, stop: threading.Event | None = None) -> SinkStats:
    """Entry point for `heatreplay sink` and tests."""
    sink = PostgisSink(settings, stop=stop or threading.Event())
    return sink.run()
