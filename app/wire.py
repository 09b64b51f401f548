"""The ``pings`` topic's messages: what the web produces and what the consumers decode.

SPEC's form is one message per ping, keyed by driver_id, its value the validated ping.
With ``KAFKA_PINGS_PER_MESSAGE`` = N > 1 the web writes a request's pings instead as
messages of up to N pings each, the value a JSON array of validated pings, all of whose
drivers' keys map to that message's partition (the partition librdkafka's default
partitioner picks for the key: CRC-32 of the key modulo the partition count). A driver's
pings therefore stay in one partition in request order, as with keyed messages, and the
Kafka hop, a fixed cost per message, is paid once per N pings: 4.6-5.5 -> 1.3-1.6 us per
ping (`python -m bench.kafka_cost --pings-per-message 1,500`, docs/performance.md, tenth
round). The consumers read both forms whatever the setting, so it can change while
messages of the other form are still in the topic.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import cast

import msgspec
from confluent_kafka import Message

from app.ping import DRIVER_ID_MESSAGE, Ping, bad_driver_ids, encode_wire, wire_decoder

_list_encoder = msgspec.json.Encoder()
_list_decoder = msgspec.json.Decoder(list[Ping])

# one message's decoded value: a ping (SPEC's form), the pings of an array, or the
# reason the message goes to the dead-letter topic
Decoded = Ping | list[Ping] | str


def partition_for(driver_id: str, partitions: int) -> int:
    """The partition a message keyed by ``driver_id`` goes to under librdkafka's default
    partitioner (``consistent_random``: CRC-32 of the key modulo the partition count)."""
    return zlib.crc32(driver_id.encode()) % partitions


# what PingProducer produces: (key, value, partition)
OutMessage = tuple[bytes | None, bytes, int]
# librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks, by the key
ANY_PARTITION = -1


def keyed_messages(pings: Sequence[Ping]) -> list[OutMessage]:
    """SPEC's form: one message per ping, keyed by its driver."""
    return [(p.driver_id.encode(), encode_wire(p), ANY_PARTITION) for p in pings]


def batched_messages(pings: Sequence[Ping], partitions: int, per_message: int) -> list[OutMessage]:
    """Messages of up to ``per_message`` pings with no key, each ping in its driver's
    partition, the pings of a partition in the order given."""
    groups: dict[int, list[Ping]] = {}
    crc = zlib.crc32
    for ping in pings:
        part = crc(ping.driver_id.encode()) % partitions
        group = groups.get(part)
        if group is None:
            groups[part] = [ping]
        else:
            group.append(ping)
    encode = _list_encoder.encode
    return [
        (None, encode(group[start : start + per_message]), part)
        for part, group in groups.items()
        for start in range(0, len(group), per_message)
    ]


def decode_batch(messages: Sequence[Message]) -> list[Decoded]:
    """Decode each message's value on its own: item i is message i's Ping, its list of
    pings (a value that is a JSON array), or, for a message that cannot be decoded or
    breaks the ping's rules (ranges, the driver_id pattern), the reason. A message's
    pings are all or nothing: one bad ping dead-letters the whole message, as one bad
    ping fails a whole request at the API. Never one decode of the values joined into a
    list: bytes that are no ping alone can join into valid pings (two halves of one
    object), which would store pings nobody sent and shift every later item off its
    message. One call per value is also the faster (0.39 vs 0.56 us per message)."""
    decode = wire_decoder.decode
    decode_list = _list_decoder.decode
    out: list[Decoded] = []
    plain = True  # every item a single ping: the ids are checked in one pass
    for msg in messages:
        value = msg.value() or b""
        try:
            if value[:1] == b"[":
                pings = decode_list(value)
                out.append(pings if pings else "a JSON array of pings must hold at least one")
                plain = False
            else:
                out.append(decode(value))
        except msgspec.DecodeError as exc:
            out.append(str(exc))
            plain = False
    if plain:
        for index in bad_driver_ids(cast(list[Ping], out)):
            out[index] = f"driver_id: {DRIVER_ID_MESSAGE}"
        return out
    flat: list[Ping] = []
    where: list[tuple[int, int]] = []  # (message, index in it) per ping of ``flat``
    for i, item in enumerate(out):
        if isinstance(item, Ping):
            flat.append(item)
            where.append((i, -1))
        elif isinstance(item, list):
            flat.extend(item)
            where.extend((i, k) for k in range(len(item)))
    for index in bad_driver_ids(flat):
        i, k = where[index]
        if not isinstance(out[i], str):  # the first bad ping of a message names it
            out[i] = (
                f"driver_id: {DRIVER_ID_MESSAGE}"
                if k < 0
                else f"ping {k}: driver_id: {DRIVER_ID_MESSAGE}"
            )
    return out


def ping_count(decoded: Sequence[Decoded]) -> int:
    """Pings in decoded messages (a message dead-lettered counts as one)."""
    extra = 0
    for item in decoded:
        if isinstance(item, list):
            extra += len(item) - 1
    return len(decoded) + extra


def pings_and_bad(
    messages: Sequence[Message], decoded: Sequence[Decoded]
) -> tuple[list[Ping], list[tuple[Message, str]]]:
    """Every decoded ping in message order, and the messages to dead-letter with why."""
    pings: list[Ping] = []
    bad: list[tuple[Message, str]] = []
    for msg, item in zip(messages, decoded, strict=True):
        if isinstance(item, Ping):
            pings.append(item)
        elif isinstance(item, list):
            pings.extend(item)
        else:
            bad.append((msg, item))
    return pings, bad
