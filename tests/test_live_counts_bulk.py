"""The live script's bulk paths: batches larger than its 4,000-driver chunks, drivers
expiring and coming back within one batch, and moves across geohash-6 cells, checked
against a brute-force evaluation of the SPEC heat value at every precision, and the
marker sets against the drivers' stored cells."""

from __future__ import annotations

import random

import geohash
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.live_counts import (
    PRECISIONS,
    DriverState,
    LiveCounts,
    cells6_covering,
    cells6_covering_all,
    latest_per_driver,
    packed_lines,
    stored_value,
)
from app.ping import Ping
from replay.heat import BBox, View, build_frame, cell_bounds

WINDOW_S = 10.0
T0 = 1_790_000_000_000


@pytest.fixture
def live(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield LiveCounts(client, settings.with_(live_window_s=WINDOW_S))
    client.close()


def brute(latest: dict[str, Ping], now: int, precision: int) -> dict[str, int]:
    """Distinct drivers per cell whose latest ping is in (now - W, now]."""
    out: dict[str, int] = {}
    for p in latest.values():
        if now - WINDOW_S * 1000 < p.ts <= now:
            cell = geohash.encode(p.lat, p.lon, 8)[:precision]
            out[cell] = out.get(cell, 0) + 1
    return out


def fleet(
    rng: random.Random, name: str, n: int, south: float, west: float, span: float
) -> list[Ping]:
    """``n`` drivers pinging at T0 from random spots of a ``span``-degree square."""
    return [
        Ping(f"{name}{i}", south + rng.random() * span, west + rng.random() * span, T0)
        for i in range(n)
    ]


def marker_sets(live: LiveCounts) -> dict[str, set[str]]:
    prefix = live.settings.redis_key_prefix
    pattern = prefix.replace("{", "\\{").replace("}", "\\}") + "m:*"
    out = {}
    for key in live.redis.scan_iter(match=pattern):
        members = {m.decode() for m in live.redis.smembers(key)}
        if members:
            out[key.decode()[len(prefix) + 2 :]] = members
    return out


def test_big_batches_expiry_and_return_in_one_batch_are_exact(live):
    rng = random.Random(11)
    n = 9_001  # three chunks of the script's bulk reads and writes
    where = {f"d{i}": (6.45 + rng.random() * 0.2, 3.3 + rng.random() * 0.2) for i in range(n)}
    latest: dict[str, Ping] = {}

    def send(drivers: list[str], ts: int, jump: float) -> None:
        batch = []
        for d in drivers:
            lat, lon = where[d]
            # most move a street (new geohash-8), some jump across geohash-6 cells
            lat += jump if rng.random() < 0.2 else 0.0005
            where[d] = (lat, lon)
            ping = Ping(d, lat, lon, ts, heading=90.0, speed_kmh=30.0)
            batch.append(ping)
            latest[d] = ping
        live.apply(batch, now_ms=ts)

    everyone = sorted(where)
    send(everyone, T0, 0.02)
    send(everyone, T0 + 1000, 0.02)
    # half go quiet; 11 s later they are out of the window, while a third of them
    # come back in the same batch that expires them, somewhere else
    quiet = everyone[::2]
    send(everyone[1::2], T0 + 6000, 0.02)
    back = quiet[::3]
    send(back + everyone[1::2][:500], T0 + 12_000, 0.05)

    now = T0 + 12_000
    for precision in PRECISIONS:
        assert live.cells(precision, now) == brute(latest, now, precision), precision

    # markers: every active driver in the set of its geohash-6 cell, and nowhere else
    active = {d: p for d, p in latest.items() if p.ts > now - WINDOW_S * 1000}
    want: dict[str, set[str]] = {}
    for d, p in active.items():
        want.setdefault(geohash.encode(p.lat, p.lon, 6), set()).add(d)
    assert marker_sets(live) == want

    # the stored value carries the position the markers and the driver panel read
    d = back[0]
    state = live.driver(d)
    assert state == DriverState(
        latest[d].ts,
        geohash.encode(latest[d].lat, latest[d].lon, 8),
        round(latest[d].lat, 6),
        round(latest[d].lon, 6),
        90.0,
        30.0,
    )
    assert live.driver(quiet[1]) is None  # expired and gone from the hash


def test_replaying_a_batch_changes_nothing(live):
    rng = random.Random(5)
    pings = [
        Ping(f"r{i}", 6.4 + rng.random() * 0.3, 3.2 + rng.random() * 0.4, T0 + i % 7)
        for i in range(5_000)
    ]
    live.apply(pings, now_ms=T0 + 10)
    before = {p: live.cells(p, T0 + 10) for p in PRECISIONS}
    assert live.apply(list(reversed(pings)), now_ms=T0 + 10) == 0  # nothing changed cell
    assert {p: live.cells(p, T0 + 10) for p in PRECISIONS} == before


@pytest.mark.parametrize("odd_id", ["tab\there", "new\nline", ""])
def test_ids_the_packed_batch_cannot_carry_take_the_other_form(live, odd_id):
    """The script takes a batch as one packed string ("driver\\tts\\tvalue" lines) or,
    when an id holds a separator, as three arguments per driver: same state either way.
    (The API refuses such ids; a raw producer's message can still carry one.)"""
    rng = random.Random(3)
    pings = fleet(rng, "p", 300, 6.45, 3.3, 0.2)
    moved = [Ping(p.driver_id, p.lat + 0.01, p.lon, T0 + 500, 90.0, 30.0) for p in pings[:120]]
    odd = Ping(odd_id, 6.5, 3.35, T0 + 700, None, 12.5)
    live.apply(pings, now_ms=T0 + 1_000)
    live.apply([*moved, odd], now_ms=T0 + 1_000)
    got = {p: live.cells(p, T0 + 1_000) for p in PRECISIONS}
    latest = {p.driver_id: p for p in [*pings, *moved, odd]}
    assert got == {p: brute(latest, T0 + 1_000, p) for p in PRECISIONS}
    assert live.driver(odd_id) == DriverState(
        odd.ts, geohash.encode(6.5, 3.35, 8), 6.5, 3.35, 12.5, None
    )
    assert live.driver(moved[0].driver_id) == DriverState(
        moved[0].ts,
        geohash.encode(moved[0].lat, moved[0].lon, 8),
        round(moved[0].lat, 6),
        round(moved[0].lon, 6),
        30.0,  # heading
        90.0,  # speed
    )


@hsettings(max_examples=200, deadline=None)
@given(
    st.floats(-179.0, 178.0),
    st.floats(-89.0, 88.0),
    st.floats(0.0, 0.3),
    st.floats(0.0, 0.3),
    st.booleans(),
)
def test_the_geohash6_cover_holds_every_cell_touching_the_box(w, s, dw, dh, on_edge):
    if on_edge:  # the box starts exactly on a geohash-6 cell's east edge
        _w, cs, ce, _n = cell_bounds(geohash.encode(s, w, 6))
        w, s = ce, cs
    box = BBox(w, s, min(180.0, w + dw), min(90.0, s + dh))
    cover = cells6_covering(box)
    if cover is None:
        return  # too big: the caller reads every driver
    # brute force: every cell whose centre lies within one cell of the box, tested
    dlon, dlat = 360 / 2**15, 180 / 2**15
    lat = box.south - dlat
    want = set()
    while lat <= box.north + dlat:
        lon = box.west - dlon
        while lon <= box.east + dlon:
            at = (max(-89.9999, min(89.9999, lat)), max(-179.9999, min(179.9999, lon)))
            cell = geohash.encode(*at, 6)
            if box.intersects(*cell_bounds(cell)):
                want.add(cell)
            lon += dlon / 2
        lat += dlat / 2
    assert want <= set(cover)


def test_street_counts_for_a_box_equal_the_whole_read_filtered_by_the_box(live):
    rng = random.Random(21)
    pings = fleet(rng, "s", 3_000, 6.50, 3.36, 0.04)
    live.apply(pings, now_ms=T0)
    for _ in range(30):
        w, s = 3.36 + rng.random() * 0.03, 6.50 + rng.random() * 0.03
        box = BBox(w, s, w + rng.random() * 0.02, s + rng.random() * 0.02)
        for precision in (7, 8):
            view = View(precision, box)
            whole = build_frame(live.cells(precision, T0), view, T0, "live")
            near = build_frame(live.cells(precision, T0, box), view, T0, "live")
            assert near == whole
            cells = [geohash.encode(p.lat, p.lon, precision) for p in pings]
            assert whole["total"] == sum(box.intersects(*cell_bounds(c)) for c in cells)


def test_one_read_near_several_boxes_is_exact_in_each(live):
    rng = random.Random(8)
    pings = fleet(rng, "m", 4_000, 6.40, 3.30, 0.2)
    live.apply(pings, now_ms=T0)
    boxes = [BBox(3.31, 6.41, 3.33, 6.42), BBox(3.45, 6.55, 3.47, 6.58), BBox(3.4, 6.5, 3.4, 6.5)]
    assert cells6_covering_all([*boxes, None]) is None  # one unbounded view: read all
    assert cells6_covering_all([BBox(-180, -90, 180, 90)]) is None  # too many cells
    union = cells6_covering_all(boxes)
    assert union is not None and set(union) == {c for b in boxes for c in cells6_covering(b) or []}
    for precision in (7, 8):
        near, _ = live.snapshot(precision, T0, boxes)
        whole, _ = live.snapshot(precision, T0)
        assert set(near) < set(whole)  # only the drivers around the boxes were read
        for box in boxes:
            view = View(precision, box)
            assert build_frame(near, view, T0, "live") == build_frame(whole, view, T0, "live")


def test_a_batch_keeps_each_drivers_newest_ping_ties_to_the_larger_geohash():
    a = Ping("t", 6.50, 3.30, T0 + 5)
    b = Ping("t", 6.60, 3.40, T0 + 5)  # same ts, another cell
    older = Ping("t", 6.70, 3.50, T0)
    high, low = sorted((a, b), key=lambda p: geohash.encode(p.lat, p.lon, 8), reverse=True)
    for order in ([a, b, older], [b, a, older], [older, b, a], [older, a, b]):
        ((ts, cell, ping),) = latest_per_driver(order).values()
        assert (ts, ping) == (T0 + 5, high) and cell == geohash.encode(high.lat, high.lon, 8)
    assert latest_per_driver([low, older])["t"][2] is low


_optional = st.one_of(st.none(), st.floats(0, 359.99), st.integers(0, 359))


@hsettings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True),
            st.integers(0, 253_402_300_799_999),
            st.floats(-90, 90, exclude_max=True),
            st.floats(-180, 180, exclude_max=True),
            _optional,
            st.one_of(st.none(), st.floats(0, 400), st.integers(0, 400)),
        ),
        max_size=20,
    )
)
def test_packed_lines_carry_exactly_what_stored_value_writes(rows):
    """The packed batch formats its lines in one go; they must hold the very values the
    three-argument form stores (and DriverState must read them back)."""
    pings = [Ping(d, lat, lon, ts, speed, heading) for d, ts, lat, lon, heading, speed in rows]
    latest = latest_per_driver(pings)
    lines = packed_lines(latest).split("\n") if latest else []
    expected = [f"{d}\t{ts}\t{stored_value(ts, gh, p)}" for d, (ts, gh, p) in latest.items()]
    assert lines == expected
    for line in lines:
        _, ts, value = line.split("\t")
        state = DriverState.parse(value)
        ping = latest[line.split("\t")[0]][2]
        assert state.ts == int(ts) == ping.ts
        assert (state.heading is None) == (ping.heading is None)
        assert (state.speed_kmh is None) == (ping.speed_kmh is None)
        assert abs(state.lat - ping.lat) <= 5e-7 and abs(state.lon - ping.lon) <= 5e-7


def test_wipe_also_removes_the_earlier_layouts_keys(live):
    prefix = live.settings.redis_key_prefix
    live.apply([Ping("w", 6.5, 3.3, T0)], now_ms=T0)
    live.redis.hset(f"{prefix}c:8", "s14mhg3b", 1)  # as an older version left them
    live.redis.hset(f"{prefix}pos", "w", "6.5,3.3,,")
    live.wipe()
    pattern = prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    assert [k for k in live.redis.scan_iter(match=pattern) if b":m:" not in k] == []
