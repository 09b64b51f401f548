"""The sink's position lives in PostgreSQL: stopping after a batch, or dying between the
PostgreSQL commit and the Kafka commit, neither loses nor doubles a ping."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from app.kafka_io import PingProducer
from app.postgis_sink import PostgisSink
from tests.conftest import wait_until
from tests.faults import check_history, key_of, keyed_pings, produce, row_count


def stored_offsets(db, settings) -> dict[int, int]:
    rows = db.execute(
        "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s",
        (settings.group_sink, settings.topic_pings),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def kafka_committed(settings) -> dict[int, int]:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_sink}
    )
    try:
        parts = [TopicPartition(settings.topic_pings, p) for p in range(settings.topic_partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


@pytest.fixture
def accepted(settings):
    producer = PingProducer(settings)
    pings = keyed_pings(3000)
    assert produce(producer, pings) == 3000
    producer.close()
    return {key_of(p) for p in pings}


def test_stop_after_one_batch_then_restart_loses_and_doubles_nothing(
    settings, db, accepted, run_in_background
):
    s = settings.with_(sink_batch_max=1000, sink_batch_wait_s=2.0)
    first = PostgisSink(s).run(max_batches=1)
    assert (first.batches, first.rows) == (1, 1000)
    assert row_count(db) == 1000
    assert sum(stored_offsets(db, s).values()) == 1000

    second = PostgisSink(s)
    run_in_background(second)
    wait_until(lambda: row_count(db) >= 3000, timeout=30)
    second.stop.set()
    check = check_history(db, accepted)
    assert check.exact, check.as_dict()
    assert second.stats.rows == 2000  # it resumed where PostgreSQL said, not before
    assert sum(stored_offsets(db, s).values()) == 3000


def test_crash_between_postgres_and_kafka_commit_doubles_nothing(
    settings, db, accepted, run_in_background
):
    s = settings.with_(sink_batch_max=500, sink_batch_wait_s=2.0)

    class Crash(Exception):
        pass

    def crash_on_third(_rows: int) -> None:
        if crashing.stats.batches == 3:
            raise Crash("killed after the PostgreSQL commit, before the Kafka commit")

    crashing = PostgisSink(s, after_db_commit=crash_on_third)
    with pytest.raises(Crash):
        crashing.run()
    assert row_count(db) == 1500
    in_pg = stored_offsets(db, s)
    in_kafka = kafka_committed(s)
    # Kafka missed the last batch's commit: trusting it would write 500 rows twice
    assert sum(in_pg.values()) == 1500
    assert sum(max(0, in_kafka.get(p, 0)) for p in in_pg) < 1500

    resumed = PostgisSink(s)
    run_in_background(resumed)
    wait_until(lambda: row_count(db) >= 3000, timeout=30)
    resumed.stop.set()
    check = check_history(db, accepted)
    assert check.exact, check.as_dict()
    assert resumed.stats.rows == 1500


def test_the_sink_collects_one_batch_ahead_of_the_write_and_no_more(
    settings, db, accepted, run_in_background
):
    """Batch n+1 is collected while batch n is written (PostgreSQL is not left idle while
    Python decodes), but no further: two batches in hand at most, whatever the backlog."""
    s = settings.with_(sink_batch_max=500, sink_batch_wait_s=2.0)
    release = threading.Event()

    def hold_the_first(_rows: int) -> None:
        if sink.stats.batches == 1:
            release.wait(30)

    sink = PostgisSink(s, after_db_commit=hold_the_first)
    run_in_background(sink)
    try:
        wait_until(lambda: sink.stats.batches_collected == 2, timeout=30)
        time.sleep(1.0)  # 2,500 pings wait in the topic: a third batch would be taken now
        assert (sink.stats.batches_collected, sink.stats.batches) == (2, 1)
        assert row_count(db) == 500
        assert sum(max(0, o) for o in kafka_committed(s).values()) == 0
    finally:
        release.set()
    wait_until(lambda: row_count(db) >= 3000, timeout=30)
    sink.stop.set()
    wait_until(lambda: sum(max(0, o) for o in kafka_committed(s).values()) == 3000, timeout=30)
    check = check_history(db, accepted)
    assert check.exact, check.as_dict()
    assert sink.stats.batches == sink.stats.batches_collected == 6
