"""The minute rollups are exact for any driver id the sink may meet: ids are sent to
PostgreSQL as one comma-joined string, and ids that string could not carry (a comma, an
empty id: possible on the wire, which the sink decodes without the API's rules) take
the array form of the same SQL. The sink's memory of the pairs it wrote saves work
without changing a count: failed transactions are not remembered, forgotten minutes
are sent again, and two members with two memories still count a driver once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from app.copy_rows import COPY_SQL, encode_copy
from app.ping import Ping
from replay.rollups import MinuteRollups, Pairs, batch_pairs
from tests.faults import rollup_mismatches
from tests.replay_support import ensure_days, ms, truncate, write_history

T0 = ms(datetime(2026, 11, 20, 17, 0, 30, tzinfo=UTC))


def _rollups(conn: psycopg.Connection) -> tuple[set[tuple[int, str]], dict[int, tuple]]:
    pairs = {
        (int(m), d)
        for m, d in conn.execute(
            "SELECT extract(epoch FROM minute)::bigint / 60, driver_id FROM driver_minutes"
        ).fetchall()
    }
    per_minute = {
        int(m): (int(n), int(d))
        for m, n, d in conn.execute(
            "SELECT extract(epoch FROM minute)::bigint / 60, pings, drivers FROM minute_stats"
        ).fetchall()
    }
    return pairs, per_minute


@pytest.mark.parametrize(
    "ids",
    [
        ["a", "b", "c"],  # the string form
        ["a", "b,c", "d"],  # a comma: arrays
        ["a", "", "d"],  # an empty id: arrays
        ["only"],
        [""],  # alone, the string form would be an empty array
    ],
)
def test_rollups_exact_for_any_driver_id(db, ids):
    truncate(db)
    ensure_days(db, T0, T0 + 120_000)
    pings = [Ping(d, 6.5, 3.37, T0 + k * 20_000 + i) for k in range(5) for i, d in enumerate(ids)]
    # three batches, one straddling a minute boundary; a driver appears in several
    write_history(db, [pings[:4], pings[4:9], pings[9:]])
    pairs, per_minute = _rollups(db)
    expected = Counter((p.ts // 60_000, p.driver_id) for p in pings)
    assert pairs == set(expected)
    minutes = Counter(p.ts // 60_000 for p in pings)
    assert per_minute == {
        m: (minutes[m], len({d for (mm, d) in expected if mm == m})) for m in minutes
    }


def _write(conn: psycopg.Connection, rollups: MinuteRollups, batch: list[Ping]) -> Pairs:
    """One batch as the sink writes it: COPY, rollups, commit, then remember."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(COPY_SQL) as copy:
            copy.write(encode_copy(batch))
        sent = rollups.write(cur, batch)
    rollups.committed(sent)
    return sent


def _fleet(minute_ms: int, drivers: list[str], pass_no: int) -> list[Ping]:
    return [Ping(d, 6.5, 3.37, minute_ms + pass_no * 1_000 + i) for i, d in enumerate(drivers)]


def test_sink_memory_sends_each_pair_once_and_stays_exact(db):
    truncate(db)
    ensure_days(db, T0, T0 + 300_000)
    rollups = MinuteRollups(keep_minutes=2)
    m0 = T0 // 60_000 * 60_000  # 17:00
    drivers = [f"d{i}" for i in range(50)]
    all_pings: list[Ping] = []
    sent_sizes = []
    for pass_no in range(4):  # the same fleet pinging four times in one minute
        batch = _fleet(m0, drivers, pass_no)
        all_pings += batch
        sent_sizes.append(sum(len(v) for v in _write(db, rollups, batch).values()))
    assert sent_sizes == [50, 0, 0, 0]
    newcomers = _fleet(m0, [*drivers[:10], "new1", "new2"], 5)
    all_pings += newcomers
    assert _write(db, rollups, newcomers) == {m0 // 60_000: {"new1", "new2"}}
    assert rollups.remembered() == 52
    # two more minutes: the memory keeps the newest two
    for k in (1, 2):
        batch = _fleet(m0 + k * 60_000, drivers[:5], 0)
        all_pings += batch
        _write(db, rollups, batch)
    assert rollups.remembered() == 10
    # a late ping for the forgotten minute is sent again and skipped by the key
    late = _fleet(m0, [*drivers[:3], "late"], 7)
    all_pings += late
    assert _write(db, rollups, late) == {m0 // 60_000: {*drivers[:3], "late"}}
    assert rollup_mismatches(db) == 0
    pairs, per_minute = _rollups(db)
    assert pairs == {(p.ts // 60_000, p.driver_id) for p in all_pings}
    assert per_minute[m0 // 60_000] == (50 * 4 + 12 + 4, 53)


def test_the_counted_pairs_are_left_as_they_were_for_a_retry(db):
    """The sink counts a batch once and may send it in a second transaction (the first
    failed): the pairs it passes must not lose the drivers the memory already has."""
    truncate(db)
    ensure_days(db, T0, T0 + 60_000)
    rollups = MinuteRollups()
    _write(db, rollups, _fleet(T0, ["a", "b"], 0))
    per_minute, pairs = batch_pairs(_fleet(T0, ["a", "b", "c"], 1))
    with db.transaction(), db.cursor() as cur:
        sent = rollups.write_counted(cur, per_minute, pairs)
    assert sent == {T0 // 60_000: {"c"}}
    assert pairs == {T0 // 60_000: {"a", "b", "c"}}


def test_rolled_back_batch_is_not_remembered(db):
    truncate(db)
    ensure_days(db, T0, T0 + 60_000)
    rollups = MinuteRollups()
    batch = _fleet(T0, ["a", "b"], 0)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction(), db.cursor() as cur:
        with cur.copy(COPY_SQL) as copy:
            copy.write(encode_copy(batch))
        rollups.write(cur, batch)
        raise Boom  # e.g. the connection dropped before the commit
    assert rollups.remembered() == 0
    # the retry sends the pairs again
    assert _write(db, rollups, batch) == {T0 // 60_000: {"a", "b"}}
    assert rollup_mismatches(db) == 0


def test_two_members_writing_one_minute_count_each_driver_once(db, database_url):
    """Two sink members (each its own memory and connection), e.g. around a rebalance:
    the key decides, not the memories."""
    truncate(db)
    ensure_days(db, T0, T0 + 60_000)
    one, two = MinuteRollups(), MinuteRollups()
    with psycopg.connect(database_url) as other:
        _write(db, one, _fleet(T0, ["a", "b", "c"], 0))
        _write(other, two, _fleet(T0, ["b", "c", "d"], 1))
        _write(db, one, _fleet(T0, ["a", "d"], 2))
        _write(other, two, _fleet(T0, ["a", "b", "c", "d"], 3))
    assert _rollups(db)[1] == {T0 // 60_000: (12, 4)}
    assert rollup_mismatches(db) == 0


def test_minutes_ahead_of_the_clock_do_not_push_the_current_one_out(db):
    truncate(db)
    ensure_days(db, T0, T0 + 600_000)
    m0 = T0 // 60_000 * 60_000
    rollups = MinuteRollups(keep_minutes=2, clock_ms=lambda: m0 + 30_000)
    _write(db, rollups, _fleet(m0 - 60_000, ["a"], 0))
    _write(db, rollups, _fleet(m0, ["a", "b"], 0))
    # drivers whose clocks run 1-4 minutes fast
    for k in (1, 2, 3, 4):
        assert _write(db, rollups, _fleet(m0 + k * 60_000, [f"fast{k}"], 0))
    assert _write(db, rollups, _fleet(m0, ["a", "b"], 1)) == {m0 // 60_000: set()}
    assert _write(db, rollups, _fleet(m0 + 60_000, ["fast1"], 1)) == {
        m0 // 60_000 + 1: {"fast1"}  # not remembered: sent again, skipped by the key
    }
    assert rollups.remembered() == 3
    assert rollup_mismatches(db) == 0
