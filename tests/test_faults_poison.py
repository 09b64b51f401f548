"""Poison messages: bytes no worker can decode go to the dead-letter topic with the
reason and the original bytes, both workers keep going, later pings are counted, and the
dead-letter counters reach /metrics' Redis hash."""

from __future__ import annotations

import time

from confluent_kafka import Message, Producer

from app import metrics
from app.kafka_io import PingProducer
from app.live_counts import LiveCounts
from app.live_worker import LiveWorker
from app.postgis_sink import PostgisSink
from app.wire import decode_batch
from tests.conftest import read_topic, wait_until
from tests.faults import check_history, key_of, keyed_pings, produce

POISON = [
    b"\xff\xfe\x00not json",
    b'{"driver_id": 5, "lat": 1, "lon": 2, "ts": 3}',
    b'{"driver_id": "d", "lat": 6.5',
    b'{"driver_id": "no-ts", "lat": 6.5, "lon": 3.4}',
    b"",
    # well-formed JSON no consumer can store or count (a producer other than our API):
    # the sink's encoder raised on these and stopped, the same batch failing every retry
    b'{"driver_id": "fast", "lat": 6.5, "lon": 3.4, "ts": 3, "speed_kmh": 1e39}',
    b'{"driver_id": "north", "lat": 1000.0, "lon": 3.4, "ts": 3}',
    b'{"driver_id": "nul\\u0000id", "lat": 6.5, "lon": 3.4, "ts": 3}',
    # bytes that are no ping alone but join into pings: decoding a batch's values joined
    # into one list stored these (and the sink stopped on a value holding two)
    b'{"driver_id": "a", "lat": 6.5, "lon": 3.4, "ts": 3},{"driver_id": "b", "lat": 6.5, '
    b'"lon": 3.4, "ts": 3}',
    b'{"driver_id": "half", "lat": 6.5',
    b'"lon": 3.4, "ts": 3}',
]


def test_each_message_decodes_to_its_own_item_whatever_its_neighbours_hold():
    good = b'{"driver_id": "ok", "lat": 6.5, "lon": 3.4, "ts": 3}'
    values = [good, POISON[-3], good, POISON[-2], POISON[-1], good]
    items = decode_batch(
        [Message(topic="t", partition=0, offset=i, value=v) for i, v in enumerate(values)]
    )
    assert len(items) == len(values)
    kinds = ["ping" if not isinstance(item, str) else "dead" for item in items]
    assert kinds == ["ping", "dead", "ping", "dead", "dead", "ping"]
    assert [item.driver_id for item in items if not isinstance(item, str)] == ["ok"] * 3


def test_poison_goes_to_dead_letters_and_the_workers_carry_on(settings, db, run_in_background):
    import redis

    settings = settings.with_(live_window_s=60.0)  # the good pings stay live throughout
    sink, live = PostgisSink(settings), LiveWorker(settings)
    run_in_background(sink)
    run_in_background(live)
    now = int(time.time() * 1000)
    good = keyed_pings(100, base_ts=now - 5000)
    producer = PingProducer(settings)
    produce(producer, good[:50])
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i, value in enumerate(POISON):
        raw.produce(settings.topic_pings, value=value, key=f"poison-{i}".encode())
    assert raw.flush(10) == 0
    produce(producer, good[50:])  # after the poison: must still be counted
    producer.close()

    wait_until(lambda: sink.stats.rows >= 100 and live.stats.pings >= 100, timeout=60)
    wait_until(lambda: len(read_topic(settings, settings.topic_dlq, timeout=5)) >= 10, timeout=30)
    dlq = read_topic(settings, settings.topic_dlq)
    assert len(dlq) == 2 * len(POISON)  # once per worker
    by_source: dict[str, dict[bytes, dict[str, bytes]]] = {}
    for msg in dlq:
        headers = dict(msg.headers())
        by_source.setdefault(headers["source"].decode(), {})[msg.key()] = {
            **headers,
            "value": msg.value() or b"",
        }
    assert sorted(by_source) == ["live_worker", "postgis_sink"]
    for records in by_source.values():
        assert sorted(records) == sorted(f"poison-{i}".encode() for i in range(len(POISON)))
        for i, value in enumerate(POISON):
            record = records[f"poison-{i}".encode()]
            assert record["value"] == value  # the original bytes
            assert record["reason"]  # why it could not be decoded
            assert record["topic"].decode() == settings.topic_pings
            assert int(record["offset"]) >= 0
    assert b"Expected `str`" in by_source["postgis_sink"][b"poison-1"]["reason"]
    assert b"ts" in by_source["postgis_sink"][b"poison-3"]["reason"]
    for source in by_source.values():
        assert b"speed_kmh" in source[b"poison-5"]["reason"]
        assert b"lat" in source[b"poison-6"]["reason"]
        assert b"driver_id" in source[b"poison-7"]["reason"]

    check = check_history(db, {key_of(p) for p in good})
    assert check.exact, check.as_dict()
    client = redis.Redis.from_url(settings.redis_url)
    counters = metrics.read(client, settings.redis_key_prefix)
    assert counters["sink_dead_letters"] == len(POISON)
    assert counters["live_dead_letters"] == len(POISON)
    cells = LiveCounts(client, settings).cells(8, int(time.time() * 1000))
    assert sum(cells.values()) == 100  # 100 distinct drivers, all inside the window
    client.close()
    assert sink.stats.dead_letters == live.stats.dead_letters == len(POISON)


def test_a_message_too_large_to_dead_letter_whole_is_cut_and_says_so(settings):
    """Near the broker's size limit a message no longer fits once the dead-letter headers
    are added: producing it raised and the worker stopped on it at every restart."""
    from app.dead_letter import MAX_VALUE_BYTES, DeadLetters

    value = b"x" * 999_900
    message = Message(topic=settings.topic_pings, partition=1, offset=7, key=b"big", value=value)
    dead = DeadLetters(settings, "postgis_sink")
    try:
        dead.send([(message, "not a ping")])
    finally:
        dead.close()
    (record,) = read_topic(settings, settings.topic_dlq)
    headers = dict(record.headers())
    assert record.value() == value[:MAX_VALUE_BYTES]
    assert record.key() == b"big"
    assert headers["truncated"] == b"value"
    assert headers["value_bytes"] == b"999900"
    assert (headers["topic"], headers["partition"], headers["offset"]) == (
        settings.topic_pings.encode(),
        b"1",
        b"7",
    )


def test_a_message_of_several_pings_is_taken_whole_or_dead_lettered_whole(
    settings, db, run_in_background
):
    """KAFKA_PINGS_PER_MESSAGE > 1: an array whose pings are all good is stored and
    counted; one bad ping (or an empty or cut array) sends the whole message, original
    bytes and reason, to the dead-letter topic, and none of its pings is stored."""
    import redis

    from app.ping import encode_wire

    settings = settings.with_(live_window_s=60.0)
    sink, live = PostgisSink(settings), LiveWorker(settings)
    run_in_background(sink)
    run_in_background(live)
    good = keyed_pings(30, base_ts=int(time.time() * 1000) - 5000)
    producer = PingProducer(settings.with_(kafka_pings_per_message=4))
    assert producer.send_pings(good[:20]) == 20
    lost = good[20:23]  # travel inside the poison below
    bad_lat = b'{"driver_id": "x", "lat": 1000.0, "lon": 3.4, "ts": 3}'
    bad_id = b'{"driver_id": "no spaces", "lat": 6.5, "lon": 3.4, "ts": 3}'
    poison = {
        b"arr-empty": b"[]",
        b"arr-range": b"[" + encode_wire(lost[0]) + b"," + bad_lat + b"]",
        b"arr-id": b"[" + encode_wire(lost[1]) + b"," + bad_id + b"]",
        b"arr-cut": b"[" + encode_wire(lost[2]),
    }
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for key, value in poison.items():
        raw.produce(settings.topic_pings, value=value, key=key)
    assert raw.flush(10) == 0
    assert producer.send_pings(good[23:]) == 7
    producer.close()

    stored = good[:20] + good[23:]
    wait_until(lambda: sink.stats.rows >= 27 and live.stats.pings >= 27, timeout=60)
    dlq = wait_until(
        lambda: (d := read_topic(settings, settings.topic_dlq, timeout=5)) and len(d) >= 8 and d,
        timeout=30,
    )
    by_source: dict[str, dict[bytes, tuple[bytes, bytes]]] = {}
    for msg in dlq:
        headers = dict(msg.headers())
        by_source.setdefault(headers["source"].decode(), {})[msg.key()] = (
            msg.value(),
            headers["reason"],
        )
    assert sorted(by_source) == ["live_worker", "postgis_sink"]
    for records in by_source.values():
        assert {k: v for k, (v, _) in records.items()} == poison
        assert records[b"arr-empty"][1] == b"a JSON array of pings must hold at least one"
        assert b"$[1].lat" in records[b"arr-range"][1]
        assert records[b"arr-id"][1].startswith(b"ping 1: driver_id")
    check = check_history(db, {key_of(p) for p in stored})
    assert check.exact, check.as_dict()
    assert sink.stats.rows == live.stats.pings == 27
    client = redis.Redis.from_url(settings.redis_url)
    cells = LiveCounts(client, settings).cells(8, int(time.time() * 1000))
    client.close()
    assert sum(cells.values()) == 27  # 27 distinct drivers
    assert sink.stats.dead_letters == live.stats.dead_letters == len(poison)
