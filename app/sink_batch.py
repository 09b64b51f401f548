"""What the sink writes for one batch, worked out before its writer thread takes it.

The sink's run loop prepares batch n+1 here (the pings in message order, the messages to
dead-letter, the binary COPY rows, the rollup counts, the days it needs) while the
writer thread has batch n in PostgreSQL. The writer's transaction is then I/O only, so
PostgreSQL, which spends most of a batch's time on the spatial index, does not wait on
Python (docs/performance.md, eleventh round).

The preparation assumes every message is past the offsets PostgreSQL holds for this
group, as it is unless a rebalance or a retried commit came between. The writer checks
that under the offset lock (``past``) and otherwise prepares the batch again from the
messages past those offsets: the fence stays where it was, in the transaction. A message
the batch holds twice (a reassignment during its collection seeks back to PostgreSQL's
offset, which delivers again what the batch already took) is taken once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from typing import cast

from confluent_kafka import Message

from app.copy_rows import encode_rows_each, rows_in_spatial_order
from app.kafka_io import Batch
from app.ping import Ping
from replay.rollups import Pairs, batch_pairs

EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class PreparedBatch:
    pings: list[Ping]  # every ping to store, in message order
    bad: list[tuple[Message, str]]  # messages to dead-letter, with why
    rows: bytes  # the pings' binary COPY rows (no header or trailer)
    per_minute: Counter[int]  # rollups: pings per minute
    pairs: Pairs  # rollups: the drivers of each minute
    days: frozenset[date]  # the UTC days the pings fall on
    first: dict[int, int]  # partition -> lowest offset taken
    next_offsets: dict[int, int]  # partition -> highest offset taken + 1

    def past(self, floor: dict[int, int]) -> bool:
        """Every message taken is at or past ``floor`` (partition -> next offset
        PostgreSQL holds): nothing in this batch is stored already."""
        return all(offset >= floor.get(part, 0) for part, offset in self.first.items())


def prepare(batch: Batch, floor: dict[int, int] | None = None) -> PreparedBatch:
    """The batch's messages (those at or past ``floor`` if given) ready to write.

    A batch of one row layout (``rows_in_spatial_order``) is encoded at once in
    Z-order, any other row by row."""
    pings: list[Ping] = []
    bad: list[tuple[Message, str]] = []
    first: dict[int, int] = {}
    next_offsets: dict[int, int] = {}
    for msg, item in zip(batch.messages, batch.decoded, strict=True):
        # a consumed message has both; the stubs allow None
        part, offset = cast(int, msg.partition()), cast(int, msg.offset())
        if floor is not None and offset < floor.get(part, 0):
            continue  # already written by this group
        if offset < next_offsets.get(part, 0):
            # delivered again: the partition was reassigned while this batch was being
            # collected, and the sink seeks to where PostgreSQL says it stopped
            continue
        if isinstance(item, Ping):
            pings.append(item)
        elif isinstance(item, list):  # a message of several pings (app/wire.py)
            pings.extend(item)
        else:
            bad.append((msg, item))
        if offset < first.get(part, offset + 1):
            first[part] = offset
        if offset >= next_offsets.get(part, 0):
            next_offsets[part] = offset + 1
    rows = rows_in_spatial_order(pings)
    per_minute, pairs = batch_pairs(pings)
    # distinct UTC days first (integer division), dates only for those
    days = frozenset(EPOCH_DAY + timedelta(days=d) for d in {p.ts // 86_400_000 for p in pings})
    return PreparedBatch(
        pings,
        bad,
        encode_rows_each(pings) if rows is None else rows,
        per_minute,
        pairs,
        days,
        first,
        next_offsets,
    )
