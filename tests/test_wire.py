"""The topic's two message forms (app/wire.py): SPEC's one ping per keyed message, and
KAFKA_PINGS_PER_MESSAGE > 1's arrays of pings per partition; what the web writes in
each, what the consumers make of them, and batches bounded in pings."""

from __future__ import annotations

import json
import threading
import time

import pytest
from confluent_kafka import Message, Producer

from app.kafka_io import BatchCollector, PingProducer, consumer_config
from app.ping import Ping
from app.settings import SettingsError, load_settings
from app.wire import batched_messages, decode_batch, partition_for, ping_count, pings_and_bad
from tests.conftest import read_topic
from tests.faults import keyed_pings

GOOD = b'{"driver_id": "ok", "lat": 6.5, "lon": 3.4, "ts": 3}'


def _messages(values: list[bytes]) -> list[Message]:
    return [Message(topic="t", partition=0, offset=i, value=v) for i, v in enumerate(values)]


def test_the_partition_of_a_driver_is_the_one_its_key_gets_from_the_broker(settings):
    """Batched messages carry no key: their partition must be the one librdkafka's
    default partitioner gives the driver's key, or a driver's pings would be split across
    partitions (and consumers) when the setting changes."""
    settings = settings.with_(topic_partitions=4)
    from app.kafka_io import delete_topics, ensure_topics

    delete_topics(settings, [settings.topic_pings])
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    drivers = [f"drv-{i:04d}" for i in range(200)] + ["a", "Z.9:_-", "x" * 64]
    for d in drivers:
        producer.produce(settings.topic_pings, value=b"{}", key=d.encode())
    assert producer.flush(10) == 0
    got = {m.key().decode(): m.partition() for m in read_topic(settings, settings.topic_pings)}
    assert got == {d: partition_for(d, 4) for d in drivers}
    assert set(got.values()) == {0, 1, 2, 3}


def test_batched_messages_keep_each_partitions_pings_in_order_in_chunks():
    pings = keyed_pings(50)
    out = batched_messages(pings, partitions=3, per_message=4)
    by_part: dict[int, list[Ping]] = {}
    for key, value, part in out:
        assert key is None
        items = [Ping(**p) for p in json.loads(value)]
        assert 1 <= len(items) <= 4
        assert {partition_for(p.driver_id, 3) for p in items} == {part}
        by_part.setdefault(part, []).extend(items)
    for part, got in by_part.items():
        assert got == [p for p in pings if partition_for(p.driver_id, 3) == part]
    assert sum(len(v) for v in by_part.values()) == 50


def test_an_array_decodes_to_its_pings_all_or_nothing():
    one_bad_range = b'[{"driver_id": "a", "lat": 6.5, "lon": 3.4, "ts": 3}, {"driver_id": "b", "lat": 1000, "lon": 3.4, "ts": 3}]'  # noqa: E501
    one_bad_id = b'[{"driver_id": "a", "lat": 6.5, "lon": 3.4, "ts": 3}, {"driver_id": "no spaces", "lat": 6.5, "lon": 3.4, "ts": 3}]'  # noqa: E501
    two = b'[{"driver_id": "a", "lat": 6.5, "lon": 3.4, "ts": 3}, {"driver_id": "b", "lat": 6.6, "lon": 3.5, "ts": 4}]'  # noqa: E501
    values = [GOOD, two, b"[]", one_bad_range, one_bad_id, b"[" + GOOD, GOOD]
    items = decode_batch(_messages(values))
    assert items[0] == items[6] == Ping("ok", 6.5, 3.4, 3)
    assert items[1] == [Ping("a", 6.5, 3.4, 3), Ping("b", 6.6, 3.5, 4)]
    assert items[2] == "a JSON array of pings must hold at least one"
    assert isinstance(items[3], str) and "$[1].lat" in items[3]
    assert isinstance(items[4], str) and items[4].startswith("ping 1: driver_id: Expected")
    assert isinstance(items[5], str)
    assert ping_count(items) == 7 + 1  # a dead letter counts one, the pair two
    pings, bad = pings_and_bad(_messages(values), items)
    assert [p.driver_id for p in pings] == ["ok", "a", "b", "ok"]
    assert [m.offset() for m, _ in bad] == [2, 3, 4, 5]


def test_a_bad_driver_id_in_a_single_ping_message_next_to_arrays_is_caught():
    bad_id = b'{"driver_id": "bad id", "lat": 6.5, "lon": 3.4, "ts": 3}'
    items = decode_batch(_messages([b"[" + GOOD + b"]", bad_id, GOOD]))
    assert items[0] == [Ping("ok", 6.5, 3.4, 3)]
    assert isinstance(items[1], str) and items[1].startswith("driver_id: Expected")
    assert items[2] == Ping("ok", 6.5, 3.4, 3)


@pytest.mark.parametrize("value", ["0", "1001", "-3"])
def test_pings_per_message_out_of_range_is_refused(value):
    with pytest.raises(SettingsError, match="KAFKA_PINGS_PER_MESSAGE"):
        load_settings({"KAFKA_PINGS_PER_MESSAGE": value}, dotenv=None).validate()


def test_the_api_writes_arrays_per_partition_when_asked(settings, ingest_headers):
    """POST /api/pings with KAFKA_PINGS_PER_MESSAGE=3: every message of the topic holds
    1-3 pings of drivers of its partition, no key, and per partition the request's order."""
    from app import create_app

    settings = settings.with_(kafka_pings_per_message=3)
    app = create_app(settings)
    body = [
        {"driver_id": f"d{i % 7}", "lat": 6.5 + i / 1000, "lon": 3.4, "ts": 1_700_000_000_000 + i}
        for i in range(40)
    ]
    try:
        r = app.test_client().post("/api/pings", json=body, headers=ingest_headers)
    finally:
        app.extensions["heatreplay"].close()
    assert r.status_code == 202 and r.get_json() == {"accepted": 40}
    messages = sorted(
        read_topic(settings, settings.topic_pings), key=lambda m: (m.partition(), m.offset())
    )
    got: dict[int, list[str]] = {}
    for msg in messages:
        assert msg.key() is None
        items = json.loads(msg.value())
        assert 1 <= len(items) <= 3
        for item in items:
            assert partition_for(item["driver_id"], settings.topic_partitions) == msg.partition()
            got.setdefault(msg.partition(), []).append(json.dumps(item, sort_keys=True))
    for part, items in got.items():
        assert items == [
            json.dumps(b, sort_keys=True)
            for b in body
            if partition_for(b["driver_id"], settings.topic_partitions) == part
        ]
    assert sum(len(v) for v in got.values()) == 40


def _batches(settings, max_pings: int, hint: int, total: int) -> list[list[int]]:
    """Collect everything in the topic (one partition's worth, produced beforehand) in
    batches of at most ``max_pings``; each batch as its messages' ping counts."""
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(settings, settings.group_live))
    consumer.subscribe([settings.topic_pings])
    stop = threading.Event()
    # 8 s: the first poll includes the group join (~3 s); the last waits it out in vain
    collector = BatchCollector(consumer, max_pings, 8.0, stop, pings_per_message=hint)
    seen: list[list[int]] = []
    started = time.monotonic()
    try:
        while sum(map(sum, seen)) < total and time.monotonic() - started < 90:
            batch = collector.collect()
            if batch.messages:
                sizes = [ping_count([d]) for d in batch.decoded]
                assert sum(sizes) == batch.pings
                seen.append(sizes)
    finally:
        stop.set()
        consumer.close()
    return seen


def _partition_0(count: int) -> list[Ping]:
    return [p for p in keyed_pings(3 * count) if partition_for(p.driver_id, 2) == 0][:count]


def test_a_batch_is_bounded_in_pings_not_messages(settings):
    """A backlog of ten 100-ping messages and a bound of 250: batches of two messages.
    Bounded in messages, the poll asked for 250 of them, waited out the whole wait for
    messages that were never coming, and took all ten."""
    producer = PingProducer(settings.with_(kafka_pings_per_message=100))
    try:
        assert producer.send_pings(_partition_0(1_000)) == 1_000  # 10 messages of 100
    finally:
        producer.close()
    assert _batches(settings, 250, 100, 1_000) == [[100, 100]] * 5


def test_large_messages_after_small_ones_are_kept_back_not_swallowed(settings):
    """Fifty one-ping messages, then eight of 100 (a backfill after live traffic): polls
    ask for messages by the average pings per message, ~1 here, so one poll fetches all
    of them; the batch takes what fits in 250 pings and keeps the rest, in order, for
    the next batches, instead of one batch of 850."""
    pings = _partition_0(850)
    single = PingProducer(settings)
    batched = PingProducer(settings.with_(kafka_pings_per_message=100))
    try:
        assert single.send_pings(pings[:50]) == 50
        assert batched.send_pings(pings[50:]) == 800
    finally:
        single.close()
        batched.close()
    assert _batches(settings, 250, 1, 850) == [
        [1] * 50 + [100, 100],
        [100, 100],
        [100, 100],
        [100, 100],
    ]


def _collect_around_a_skip(settings, skip_to: int, total: int) -> tuple[list[int], BatchCollector]:
    """Collect partition 0 ten one-ping messages at a time; after the first ten, move the
    consumer's position to ``skip_to`` behind the collector's back, as a fetch that
    passed messages over does (the dev broker's, fifteenth round). The offsets the
    batches held, in order."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(consumer_config(settings, settings.group_live))
    consumer.subscribe([settings.topic_pings])
    stop = threading.Event()
    collector = BatchCollector(consumer, 10, 8.0, stop)
    offsets: list[int] = []
    started = time.monotonic()
    try:
        while len(offsets) < total and time.monotonic() - started < 60:
            batch = collector.collect()
            offsets += [m.offset() for m in batch.messages if m.partition() == 0]
            if len(offsets) == 10:
                consumer.seek(TopicPartition(settings.topic_pings, 0, skip_to))
    finally:
        stop.set()
        consumer.close()
    return offsets, collector


def test_messages_a_fetch_passed_over_are_fetched_again(settings):
    """Offsets 10-14 passed over: the collector sees 15 where 10 was due, drops the
    partition's messages from there, seeks back to 10 and gets every message once, in
    order. Before, the batches held 0-9 and 15-29: five pings lost by both consumers."""
    single = PingProducer(settings)
    try:
        assert single.send_pings(_partition_0(30)) == 30
    finally:
        single.close()
    offsets, collector = _collect_around_a_skip(settings, skip_to=15, total=30)
    assert offsets == list(range(30))
    assert (collector.gaps.refetches, collector.gaps.passed_over) == (1, 0)


def test_offsets_that_hold_no_message_are_passed_over_after_a_few_fetches(settings):
    """A real hole (a transaction marker of another producer, a compacted log; the dev
    broker has neither, so the fetches are given as messages): offsets 10-19 missing
    each time the partition is fetched again. Until the hole was seen GAP_SIGHTINGS
    times over GAP_CONFIRM_S the partition is sought back and its messages dropped; then
    the collector goes on from 20 instead of stalling there."""
    from confluent_kafka import Consumer, TopicPartition

    from app.kafka_io import GAP_CONFIRM_S, GAP_SIGHTINGS, OffsetGaps

    def fetched(offsets) -> list[Message]:
        return [Message(topic=settings.topic_pings, partition=0, offset=o) for o in offsets]

    consumer = Consumer(consumer_config(settings, settings.group_live))
    consumer.assign([TopicPartition(settings.topic_pings, 0, 0)])  # seek needs it
    gaps = OffsetGaps(consumer)
    try:
        assert [m.offset() for m in gaps.check(fetched(range(10)))] == list(range(10))
        for _ in range(GAP_SIGHTINGS - 1):
            assert gaps.check(fetched(range(20, 30))) == []
            time.sleep(GAP_CONFIRM_S / (GAP_SIGHTINGS - 1))
        kept = gaps.check(fetched(range(20, 30)))
    finally:
        consumer.close()
    assert [m.offset() for m in kept] == list(range(20, 30))
    assert (gaps.refetches, gaps.passed_over) == (GAP_SIGHTINGS - 1, 1)


def test_a_broker_that_does_not_answer_fails_the_request_with_a_503(settings, ingest_headers):
    """Batched messages first ask the broker for the partition count: no answer is a 503
    with Retry-After, as an unacknowledged produce is."""
    from app import create_app
    from bench.stack import free_port

    settings = settings.with_(
        kafka_pings_per_message=10,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        produce_timeout_s=1.0,
    )
    app = create_app(settings)
    try:
        r = app.test_client().post(
            "/api/pings",
            json={"driver_id": "a", "lat": 6.5, "lon": 3.4},
            headers=ingest_headers,
        )
    finally:
        app.extensions["heatreplay"].close()
    assert r.status_code == 503
    assert r.get_json()["error"] == "unavailable"
    assert "topic metadata" in r.get_json()["message"]
    assert r.headers["Retry-After"]


def test_a_stale_partition_count_fails_one_request_then_is_read_again(settings):
    """A topic recreated with fewer partitions: producing to a partition it no longer
    has fails that request (503), and the next one reads the count afresh."""
    from app.kafka_io import BrokerUnavailable

    producer = PingProducer(settings.with_(kafka_pings_per_message=10))
    try:
        producer._partition_count = (64, time.monotonic())  # the topic has 2
        pings = keyed_pings(200)
        with pytest.raises(BrokerUnavailable, match="partition"):
            producer.send_pings(pings)
        assert producer.send_pings(pings) == 200
        assert producer._partition_count[0] == settings.topic_partitions == 2
    finally:
        producer.close()
