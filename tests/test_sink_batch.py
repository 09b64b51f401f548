"""The sink prepares a batch off its writer thread (app/sink_batch.py); the writer checks
the preparation against the offsets PostgreSQL holds, under their lock, and prepares
again from the messages past them when a rebalance or a retried commit came between."""

from __future__ import annotations

from datetime import UTC, datetime

from confluent_kafka import Message

from app.copy_rows import encode_rows_each, rows_in_spatial_order
from app.dead_letter import DeadLetters
from app.kafka_io import Batch
from app.ping import Ping, encode_wire
from app.postgis_sink import PostgisSink
from app.sink_batch import prepare
from app.wire import decode_batch, ping_count
from tests.faults import row_count

T0 = int(datetime(2026, 11, 20, 17, 59, 58, tzinfo=UTC).timestamp() * 1000)


def ping(n: int, ts: int = T0) -> Ping:
    return Ping(f"drv-{n % 7:03d}", 6.45 + n * 0.001, 3.35 + n * 0.002, ts + n * 500, 30.0, 90.0)


def batch_of(values: list[tuple[int, int, bytes]], topic: str = "t") -> Batch:
    """Messages from (partition, offset, value), decoded as the collector does."""
    messages = [Message(topic=topic, partition=p, offset=o, value=v) for p, o, v in values]
    decoded = decode_batch(messages)
    return Batch(messages, decoded, ping_count(decoded))


def array(*pings: Ping) -> bytes:
    return b"[" + b",".join(encode_wire(p) for p in pings) + b"]"


def test_a_prepared_batch_holds_its_pings_rows_rollups_days_and_offsets():
    pings = [ping(n) for n in range(8)]
    batch = batch_of(
        [
            (0, 10, encode_wire(pings[0])),
            (1, 4, array(*pings[1:4])),
            (0, 11, b'{"driver_id": "d", "lat": 6.5'),  # cut off: a dead letter
            (1, 5, array(*pings[4:7])),
            (0, 12, encode_wire(pings[7])),
        ]
    )
    prepared = prepare(batch)
    assert prepared.pings == pings
    assert [(m.partition(), m.offset()) for m, _ in prepared.bad] == [(0, 11)]
    assert prepared.rows == rows_in_spatial_order(pings)
    assert (prepared.first, prepared.next_offsets) == ({0: 10, 1: 4}, {0: 13, 1: 6})
    minute = T0 // 60_000
    assert prepared.per_minute == {minute: 4, minute + 1: 4}  # 17:59:58.0 .. 18:00:01.5
    assert prepared.pairs == {
        minute: {"drv-000", "drv-001", "drv-002", "drv-003"},
        minute + 1: {"drv-004", "drv-005", "drv-006", "drv-000"},
    }
    assert {d.isoformat() for d in prepared.days} == {"2026-11-20"}
    assert prepared.past({0: 10, 1: 4}) and prepared.past({0: 0})
    assert not prepared.past({0: 10, 1: 5})


def test_prepared_again_past_a_floor_it_keeps_only_the_rest():
    pings = [ping(n) for n in range(6)]
    batch = batch_of([(0, o, encode_wire(p)) for o, p in enumerate(pings, start=20)])
    rest = prepare(batch, {0: 23})
    assert rest.pings == pings[3:]
    assert rest.rows == rows_in_spatial_order(pings[3:])
    assert (rest.first, rest.next_offsets) == ({0: 23}, {0: 26})
    nothing = prepare(batch, {0: 26})
    assert (nothing.pings, nothing.rows, nothing.first, nothing.next_offsets) == ([], b"", {}, {})


def test_messages_delivered_again_after_a_seek_back_are_taken_once():
    """A reassignment while a batch is collected seeks the partition back to where
    PostgreSQL says the sink stopped: the batch then holds those messages twice."""
    pings = [ping(n) for n in range(5)]
    first_pass = [(0, 100 + i, encode_wire(p)) for i, p in enumerate(pings[:3])]
    after_seek = [(0, 100 + i, encode_wire(p)) for i, p in enumerate(pings)]
    prepared = prepare(batch_of([*first_pass, (1, 7, encode_wire(ping(9))), *after_seek]))
    assert prepared.pings == [*pings[:3], ping(9), *pings[3:]]
    assert (prepared.first, prepared.next_offsets) == ({0: 100, 1: 7}, {0: 105, 1: 8})


def test_a_batch_of_mixed_row_layouts_is_encoded_row_by_row():
    pings = [ping(1), Ping("a-much-longer-driver-id", 6.5, 3.4, T0, None, None)]
    prepared = prepare(batch_of([(0, o, encode_wire(p)) for o, p in enumerate(pings)]))
    assert rows_in_spatial_order(pings) is None
    assert prepared.rows == encode_rows_each(pings)


def test_the_writer_stores_only_what_is_past_the_offsets_postgresql_holds(settings, db):
    """A batch prepared before another member (or this one's commit that landed unseen)
    moved the offsets: written once, then overlapping, then all stored already."""
    topic = settings.topic_pings
    pings = [ping(n, T0 + 3_600_000) for n in range(30)]
    values = [(n % 2, n // 2, encode_wire(p)) for n, p in enumerate(pings)]
    first = batch_of(values[:10], topic)  # offsets 0-4 of both partitions
    overlapping = batch_of(values[6:20], topic)  # 3-9: 3 and 4 are stored already
    sink = PostgisSink(settings)
    dead = DeadLetters(settings, source="test")
    conn = sink._db()
    assert conn is not None
    try:
        assert sink._write(conn, first, prepare(first), dead)[1:] == (10, 0)
        stale = prepare(overlapping)  # prepared before the first batch was written
        offsets, rows, _ = sink._write(conn, overlapping, stale, dead)
        assert (offsets, rows) == ({0: 10, 1: 10}, 10)
        assert sink._write(conn, overlapping, stale, dead)[:2] == ({0: 10, 1: 10}, 0)
    finally:
        sink._drop_conn()
        dead.close()
    assert row_count(db) == 20
    stored = db.execute("SELECT driver_id, ts FROM pings ORDER BY ts").fetchall()
    assert [(d, int(t.timestamp() * 1000)) for d, t in stored] == [
        (p.driver_id, p.ts) for p in pings[:20]
    ]
    per_minute = db.execute("SELECT sum(pings) FROM minute_stats").fetchone()
    assert per_minute is not None and per_minute[0] == 20
