"""Property: for random ping sets (drivers moving, going quiet, equal timestamps,
out-of-order and late arrival), the replay frame at any t and precision equals a
brute-force reference and the frame the live path produced at t; the minute rollups
equal brute-force counts of the rows."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.live_counts import LiveCounts
from app.ping import Ping
from replay.heat import View, build_frame, parse_bbox
from replay.history import counts_at, replay_frame
from replay.timeline import timeline
from tests.replay_support import ensure_days, ms, reference_counts, truncate, write_history

T0 = ms(datetime(2026, 11, 20, 17, 0, tzinfo=UTC))
SPAN_MS = 150_000  # 2.5 minutes: crosses minute boundaries, W = 10 s in tests
# a few fixed spots (shared cells, neighbouring cells) plus anywhere in Lagos
SPOTS = [(6.5095, 3.3711), (6.5101, 3.3716), (6.5180, 3.3790), (6.6018, 3.3515), (6.4281, 3.4219)]
BBOXES = [None, "3.36,6.50,3.385,6.52", "3.30,6.40,3.40,6.55"]

places = st.one_of(
    st.sampled_from(SPOTS),
    st.tuples(st.floats(6.40, 6.62), st.floats(3.30, 3.45)),
)


def _pings(d: int, where: tuple, slot: int, twin: tuple | None) -> list[Ping]:
    ts = T0 + slot * 2000
    out = [Ping(f"d{d}", where[0], where[1], ts)]
    if twin is not None:  # same driver, same ts, elsewhere: the tie-break decides
        out.append(Ping(f"d{d}", twin[0], twin[1], ts))
    return out


pings_st = st.lists(
    st.builds(
        _pings,
        st.integers(0, 6),
        places,
        st.integers(0, SPAN_MS // 2000),  # 2 s grid: equal timestamps happen often
        st.one_of(st.none(), places),
    ),
    min_size=1,
    max_size=40,
).map(lambda groups: [p for g in groups for p in g])


def live_frame_at(client, settings, arrived, t, view, rng):
    """Feed the live counter the pings that arrived by t, in arrival order and random
    batches, its clock at the newest ts seen; then read the frame at t."""
    live = LiveCounts(client, settings.with_(redis_prefix=f"p{uuid.uuid4().hex[:10]}"))
    try:
        seen = T0
        i = 0
        while i < len(arrived):
            n = rng.randint(1, 8)
            batch = arrived[i : i + n]
            seen = max(seen, *(p.ts for p in batch))
            live.apply(batch, now_ms=seen)
            i += n
        return build_frame(live.cells(view.precision, now_ms=t), view, t, "live")
    finally:
        live.wipe()


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pings=pings_st, data=st.data())
def test_replay_frame_equals_reference_and_live(settings, db, pings, data):
    conn = db
    window = settings.live_window_ms
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    truncate(conn)
    ensure_days(conn, T0, T0 + SPAN_MS)
    arrival = list(pings)
    rng.shuffle(arrival)  # out of order, late pings included
    cuts = sorted({len(arrival), *rng.sample(range(1, len(arrival) + 1), min(3, len(arrival)))})
    write_history(conn, [arrival[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)])

    client = redis.Redis.from_url(settings.redis_url)
    edges = [p.ts for p in pings] + [p.ts + window for p in pings]
    ts_st = st.one_of(st.sampled_from(edges), st.integers(T0 - 1000, T0 + SPAN_MS + 20_000))
    for _ in range(3):
        t = data.draw(ts_st)
        view = View(data.draw(st.integers(1, 8)), parse_bbox(data.draw(st.sampled_from(BBOXES))))
        expected = build_frame(reference_counts(pings, t, window, view.precision), view, t, "x")
        got = replay_frame(conn, view, t, window)
        assert got == {**expected, "mode": "replay"}
        arrived = [p for p in arrival if p.ts <= t]
        live = live_frame_at(client, settings, arrived, t, view, rng)
        assert live == {**expected, "mode": "live"}
    client.close()

    # rollups: exact per minute, whatever the arrival order and batching
    per_minute = Counter(p.ts // 60_000 for p in pings)
    drivers = {m: len({p.driver_id for p in pings if p.ts // 60_000 == m}) for m in per_minute}
    rows = conn.execute(
        "SELECT extract(epoch FROM minute)::bigint / 60, pings, drivers FROM minute_stats"
    ).fetchall()
    assert {m: (n, d) for m, n, d in rows} == {m: (per_minute[m], drivers[m]) for m in per_minute}
    tl = timeline(conn, T0, T0 + SPAN_MS + 1, 60)
    assert sum(p[1] for p in tl["points"]) == len(pings)
    two = timeline(conn, T0, T0 + SPAN_MS + 1, 120)["points"]
    for iso_t, n, d in two:
        start = ms(datetime.fromisoformat(iso_t.replace("Z", "+00:00")))
        inside = [p for p in pings if start <= p.ts < start + 120_000]
        assert (n, d) == (len(inside), len({p.driver_id for p in inside}))


def test_counts_tie_break_matches_live(settings, db):
    """Same driver, same ts, two cells: both paths pick the larger geohash-8."""
    truncate(db)
    ensure_days(db, T0, T0)
    a = Ping("tie", 6.5095, 3.3711, T0)  # s14mh9nb
    b = Ping("tie", 6.6018, 3.3515, T0)  # s14ms3b6 (larger)
    write_history(db, [[b], [a]])
    assert counts_at(db, T0, 8, settings.live_window_ms) == {"s14ms3b6": 1}
    client = redis.Redis.from_url(settings.redis_url)
    live = LiveCounts(client, settings)
    live.apply([b], now_ms=T0)
    live.apply([a], now_ms=T0)
    assert live.cells(8, now_ms=T0) == {"s14ms3b6": 1}
    client.close()
