"""Dead letters: messages a worker cannot decode go to the DLQ topic with the reason,
the original bytes and where they came from; the worker keeps going."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import KafkaException, Message, Producer

from app.kafka_io import BrokerUnavailable, producer_config
from app.settings import Settings

log = logging.getLogger(__name__)

# A dead letter carries at most this much of the message's value and key. A message near
# the broker's size limit (~1 MB by default) no longer fits once the dead-letter headers
# are added; producing it raised MSG_SIZE_TOO_LARGE and the worker stopped on it at every
# restart. A ping is ~100 bytes: anything cut here is no ping, and the record says where
# the whole message still is (topic, partition, offset) and how long it was.
MAX_VALUE_BYTES = 256 * 1024
MAX_KEY_BYTES = 4 * 1024


def _capped(
    name: str, data: bytes | None, limit: int, headers: list[tuple[str, str | bytes | None]]
) -> bytes | None:
    if data is None or len(data) <= limit:
        return data
    headers.append((f"{name}_bytes", str(len(data)).encode()))
    headers.append(("truncated", name.encode()))
    return data[:limit]


class DeadLetters:
    def __init__(self, settings: Settings, source: str):
        self.settings = settings
        self.source = source
        self._producer: Producer | None = None

    def send(self, items: Sequence[tuple[Message, str]]) -> None:
        """Produce and wait for the broker: the caller commits offsets past these
        messages only after this returns."""
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings))
        failures: list[str] = []

        def on_delivery(err: object, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for msg, reason in items:
            log.warning(
                "dead letter topic=%s partition=%s offset=%s reason=%s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                reason,
            )
            headers: list[tuple[str, str | bytes | None]] = [
                ("reason", reason.encode()),
                ("source", self.source.encode()),
                ("topic", (msg.topic() or "").encode()),
                ("partition", str(msg.partition()).encode()),
                ("offset", str(msg.offset()).encode()),
            ]
            value = _capped("value", msg.value(), MAX_VALUE_BYTES, headers)
            key = _capped("key", msg.key(), MAX_KEY_BYTES, headers)
            try:
                self._producer.produce(
                    self.settings.topic_dlq,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=on_delivery,
                )
            except (KafkaException, BufferError) as exc:
                # the caller retries with backoff (and a fresh producer) instead of
                # exiting on a message it would meet again after every restart
                failures.append(str(exc))
                break
        remaining = self._producer.flush(self.settings.produce_timeout_s + 2)
        if failures or remaining:
            # an idempotent producer whose broker lost its producer id (a restarted
            # in-memory broker) never recovers: the caller's retry gets a fresh one
            failed, self._producer = self._producer, None
            failed.purge(in_queue=True, in_flight=False)
            failed.flush(0)
            raise BrokerUnavailable(f"dead-letter produce failed: {failures or remaining}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.settings.produce_timeout_s)
