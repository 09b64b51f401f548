"""Healing the live counts: after the worker dies or Redis loses its keys, replaying the
last live window W from Kafka rebuilds them exactly.

Why replay is enough: the live value only depends on each driver's newest ping with ts
in (now - W, now], and the Lua script is idempotent (a ping it has already applied, or
an older one, changes nothing). So rewinding every partition to the first message
produced at or after now - W - margin and reading forward restores the exact state.

The rewind point is found by binary search over single-message fetches reading each
message's CreateTime, because this broker's offsets_for_times answers 0 for timestamps
inside batches. Limits (docs/guarantees.md): a ping whose ts lies more than the margin
after the time it was produced (a future-dated ping within the 5 min tolerance), or a
producer clock off by more than the margin, may be missed by a heal.

Redis losing the keys is noticed through a marker key written with SET NX: if it was
missing, whatever cleared it also cleared the counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import redis
from confluent_kafka import KafkaException

from app.kafka_io import OffsetProbe
from app.settings import Settings

log = logging.getLogger(__name__)

HEAL_MARGIN_MS = 2000  # producer clock skew and produce latency the rewind tolerates
MARKER_TTL_S = 7 * 86400  # a long-idle deployment re-heals once, harmlessly


def marker_key(settings: Settings) -> str:
    return settings.redis_key_prefix + "live:marker"


def state_lost(client: redis.Redis, settings: Settings) -> bool:
    """True if Redis lost the live state since the marker was last set (and sets it)."""
    return bool(client.set(marker_key(settings), str(os.getpid()), nx=True, ex=MARKER_TTL_S))


def first_offset_at(
    probe: OffsetProbe, topic: str, partition: int, low: int, high: int, target_ms: int
) -> int:
    """The first offset in [low, high) whose CreateTime is >= target_ms. If none is, the
    last reported message: the reported end trails multi-message batches, so what
    follows it may be newer."""
    lo, hi = low, high
    while lo < hi:
        mid = (lo + hi) // 2
        msg = probe.message_at(topic, partition, mid)
        if msg is None:  # vanished under us, or no answer: read more rather than less
            hi = mid
            break
        _kind, ts = msg.timestamp()
        if ts >= target_ms:
            hi = mid
        else:
            lo = max(mid, msg.offset() or mid) + 1
    return lo if lo < high else max(low, high - 1)


def rewind_offsets(settings: Settings, partitions: Iterable[int], now_ms: int) -> dict[int, int]:
    """Per partition, where to read from to replay the last live window."""
    target = now_ms - settings.live_window_ms - HEAL_MARGIN_MS
    topic = settings.topic_pings
    out: dict[int, int] = {}
    probe = OffsetProbe(settings)
    try:
        for part in partitions:
            try:
                low, high = probe.watermarks(topic, part)
                out[part] = first_offset_at(probe, topic, part, low, high, target)
            except KafkaException as exc:
                log.warning("live heal: cannot rewind %s[%d]: %s", topic, part, exc)
    finally:
        probe.close()
    return out
