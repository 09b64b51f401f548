"""Individual drivers at street zoom (SPEC extension: frames carry ``markers``): exactly
the drivers the heat counts, with their latest position and heading, capped per frame."""

from __future__ import annotations

import random
import time
import uuid

import geohash
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.live_counts import LiveCounts
from app.live_hub import with_live_markers
from app.ping import Ping
from replay.heat import View, build_frame, markers_wanted, parse_bbox
from replay.markers import replay_frame_with_markers
from tests.replay_support import ensure_days, write_history

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA3 = (6.5101, 3.3716)  # s14mh9ph
IKEJA = (6.6018, 3.3515)  # s14ms3b6
STREET = parse_bbox("3.36,6.50,3.385,6.52")
BOXES = [None, STREET, parse_bbox("3.30,6.40,3.40,6.55")]


@pytest.fixture
def live(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield LiveCounts(client, settings)
    client.close()


def frame(live: LiveCounts, settings, view: View, now: int) -> dict:
    built = build_frame(live.cells(view.precision, now), view, now, "live")
    return with_live_markers(live, settings, view, built)


def test_street_zoom_frames_carry_exactly_the_counted_drivers(live, settings):
    t = int(time.time() * 1000)
    live.apply(
        [
            Ping("b", *YABA, t - 2000, speed_kmh=12.0, heading=90.0),
            Ping("a", *YABA3, t - 1000),
            Ping("c", *IKEJA, t - 1000, heading=180.0),  # outside the street view
            Ping("b", *YABA3, t - 5000, heading=10.0),  # older than b's latest: ignored
        ],
        t,
    )
    street7 = frame(live, settings, View(7, STREET), t)
    assert street7["cells"] == [["s14mh9n", 1], ["s14mh9p", 1]]
    assert street7["markers"] == [["a", 6.5101, 3.3716, None], ["b", 6.5095, 3.3711, 90.0]]
    # below the marker zoom: heat only
    assert "markers" not in frame(live, settings, View(6, STREET), t)
    # the whole city at street precision: every driver, still exactly the counted ones
    city8 = frame(live, settings, View(8), t)
    assert [m[0] for m in city8["markers"]] == ["a", "b", "c"]
    assert len(city8["markers"]) == city8["total"] == 3

    # a driver moving to another geohash-6 cell leaves the street view's markers
    live.apply([Ping("a", *IKEJA, t + 500, heading=270.0)], t + 500)
    moved = frame(live, settings, View(7, STREET), t + 600)
    assert moved["markers"] == [["b", 6.5095, 3.3711, 90.0]]
    # and quiet drivers leave with the window (W = 10 s in tests)
    assert "markers" not in frame(live, settings, View(7, STREET), t + 8500)
    assert frame(live, settings, View(7, STREET), t + 8500)["cells"] == []


def test_markers_are_capped_and_the_heat_takes_over(live, settings):
    capped = settings.with_(markers_max=2)
    t = int(time.time() * 1000)
    live.apply([Ping(f"d{i}", YABA[0] + i * 1e-5, YABA[1], t) for i in range(3)], t)
    view = View(8, STREET)
    over = frame(live, capped, view, t)
    assert over["total"] == 3 and "markers" not in over
    live.apply([Ping("d2", *IKEJA, t + 1)], t + 1)
    under = frame(live, capped, view, t + 2)
    assert [m[0] for m in under["markers"]] == ["d0", "d1"]


# --- replay: the same markers from PostGIS --------------------------------------------

T0 = 1_795_194_000_000  # 2026-11-20T17:00:00Z


def replay_frame_at(db, settings, view: View, t: int) -> dict:
    return replay_frame_with_markers(
        db, view, t, settings.live_window_ms, settings.markers_min_precision, settings.markers_max
    )


def test_replay_markers_are_exact_and_equal_live_on_the_same_pings(live, settings, db):
    t = T0 + 60_000
    pings = [
        Ping("b", *YABA, t - 2000, speed_kmh=12.5, heading=90.0),
        Ping("a", *YABA3, t - 1000, speed_kmh=31.5, heading=271.5),
        Ping("c", *IKEJA, t - 1000, heading=180.0),  # outside the street view
        Ping("b", *YABA3, t - 5000, heading=10.1),  # older than b's latest: not b's marker
        # same driver, same ts, two cells: the larger geohash-8 wins in both paths
        Ping("tie", *YABA, t - 3000, heading=45.0),  # s14mh9nb
        Ping("tie", *YABA3, t - 3000, heading=135.0),  # s14mh9ph (larger)
        Ping("old", *YABA, t - 11_000, heading=0.0),  # left the 10 s window before t
        Ping("later", *YABA, t + 1, heading=0.0),  # after t: not on the map yet
    ]
    ensure_days(db, t, t)
    write_history(db, [pings[::2], pings[1::2]])
    # live saw the pings that had arrived by t, in two batches, its clock at t
    arrived = [p for p in pings if p.ts <= t]
    live.apply(arrived[:3], t - 11_000)
    live.apply(arrived[3:], t)

    street7 = replay_frame_at(db, settings, View(7, STREET), t)
    assert street7["cells"] == [["s14mh9n", 1], ["s14mh9p", 2]]
    assert street7["markers"] == [
        ["a", 6.5101, 3.3716, 271.5],
        ["b", 6.5095, 3.3711, 90.0],
        ["tie", 6.5101, 3.3716, 135.0],
    ]
    for view in (View(7, STREET), View(8, STREET), View(8), View(7), View(6, STREET)):
        replayed = replay_frame_at(db, settings, view, t)
        assert replayed == {**frame(live, settings, view, t), "mode": "replay"}, view
    assert "markers" not in replay_frame_at(db, settings, View(6, STREET), t)
    assert [m[0] for m in replay_frame_at(db, settings, View(8), t)["markers"]] == [
        "a", "b", "c", "tie"
    ]  # fmt: skip

    # 8 s later the window is (t - 2 s, t + 8 s]: b (at t - 2 s exactly) and tie have
    # left it, a is still in, 'later' has joined
    t2 = t + 8000
    assert [m[0] for m in replay_frame_at(db, settings, View(8, STREET), t2)["markers"]] == [
        "a", "later"
    ]  # fmt: skip


def test_replay_markers_are_capped_like_live(settings, db):
    capped = settings.with_(markers_max=2)
    ensure_days(db, T0, T0)
    write_history(db, [[Ping(f"d{i}", YABA[0] + i * 1e-5, YABA[1], T0) for i in range(3)]])
    over = replay_frame_at(db, capped, View(8, STREET), T0)
    assert over["total"] == 3 and "markers" not in over
    write_history(db, [[Ping("d2", *IKEJA, T0 + 1)]])
    under = replay_frame_at(db, capped, View(8, STREET), T0 + 2)
    assert under["total"] == 2
    assert under["markers"] == [["d0", 6.5095, 3.3711, None], ["d1", 6.50951, 3.3711, None]]


# --- property: replay markers == brute force == live, for random pings ------------------

SPOTS = [YABA, YABA3, IKEJA, (6.5180, 3.3790), (6.4281, 3.4219)]
HEADINGS = [None, 0.0, 10.1, 90.0, 271.25, 359.5]
places = st.one_of(st.sampled_from(SPOTS), st.tuples(st.floats(6.40, 6.62), st.floats(3.30, 3.45)))


def _driver_pings(d: int, where: tuple, slot: int, heading, twin: tuple | None) -> list[Ping]:
    ts = T0 + slot * 2000
    out = [Ping(f"d{d}", where[0], where[1], ts, heading=heading)]
    # same driver, same ts, another geohash-8 cell: the tie-break decides (within one
    # cell the choice is the arrival order's live, and invisible on a map)
    if twin is not None and geohash.encode(*twin, 8) != geohash.encode(*where, 8):
        out.append(Ping(f"d{d}", twin[0], twin[1], ts, heading=359.5))
    return out


random_pings = st.lists(
    st.builds(
        _driver_pings,
        st.integers(0, 8),
        places,
        st.integers(0, 10),  # 20 s of 2 s slots, W = 10 s: drivers overlap in the window
        st.sampled_from(HEADINGS),
        st.one_of(st.none(), places),
    ),
    min_size=1,
    max_size=30,
    # one group per (driver, slot): two groups could otherwise put one driver twice at
    # one ts in one cell, a tie nobody can see on a map and neither side orders
    unique_by=lambda group: (group[0].driver_id, group[0].ts),
).map(lambda groups: [p for g in groups for p in g])


def reference_markers(pings, t: int, window: int, frame_: dict) -> list:
    latest: dict[str, tuple] = {}
    for p in pings:
        if t - window < p.ts <= t:
            key = (p.ts, geohash.encode(p.lat, p.lon, 8))
            if p.driver_id not in latest or key > latest[p.driver_id][0]:
                latest[p.driver_id] = (key, p)
    shown = {cell for cell, _ in frame_["cells"]}
    n = frame_["precision"]
    return sorted(
        [d, round(p.lat, 6), round(p.lon, 6), p.heading]
        for d, ((_, gh), p) in latest.items()
        if gh[:n] in shown
    )


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pings=random_pings, data=st.data())
def test_markers_property_replay_equals_reference_and_live(settings, db, pings, data):
    window = settings.live_window_ms
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    db.execute("TRUNCATE pings")
    ensure_days(db, T0, T0 + 30_000)
    arrival = list(pings)
    rng.shuffle(arrival)
    write_history(db, [arrival[: len(arrival) // 2], arrival[len(arrival) // 2 :]])
    client = redis.Redis.from_url(settings.redis_url)
    for _ in range(2):
        t = data.draw(st.sampled_from([p.ts for p in pings] + [p.ts + 5000 for p in pings]))
        s = settings.with_(markers_max=data.draw(st.sampled_from([3, 500])))
        view = View(data.draw(st.sampled_from([6, 7, 7, 8, 8])), data.draw(st.sampled_from(BOXES)))
        got = replay_frame_at(db, s, view, t)
        if markers_wanted(view, got, s.markers_min_precision, s.markers_max):
            assert got["markers"] == reference_markers(pings, t, window, got)
            assert len(got["markers"]) == got["total"]
        else:
            assert "markers" not in got
        live_counts = LiveCounts(client, s.with_(redis_prefix=f"m{uuid.uuid4().hex[:10]}"))
        try:
            arrived = [p for p in arrival if p.ts <= t]
            seen = T0
            for i in range(0, len(arrived), 4):  # arrival order, batches of 4
                seen = max(seen, *(p.ts for p in arrived[i : i + 4]))
                live_counts.apply(arrived[i : i + 4], seen)
            assert frame(live_counts, s, view, t) == {**got, "mode": "live"}
        finally:
            live_counts.wipe()
            for key in client.scan_iter(match=live_counts.keys.drv.replace("drv", "m:*")):
                client.delete(key)
    client.close()


def test_a_driver_moving_inside_its_cell_moves_its_marker_on_the_socket(settings, served):
    """Counts do not change, the marker does: the socket must still get a new frame."""
    import json

    import websocket

    from app.auth import mint_token

    client = redis.Redis.from_url(settings.redis_url)
    live = LiveCounts(client, settings)
    t = int(time.time() * 1000)
    live.apply([Ping("m", 6.50950, 3.37110, t, heading=0.0)], t)
    token = mint_token(settings, "viewer")
    ws = websocket.create_connection(
        f"{served.ws}/ws/live?precision=8&bbox=3.36,6.50,3.385,6.52&token={token}", timeout=5
    )
    first = json.loads(ws.recv())
    assert first["cells"] == [["s14mh9nb", 1]]
    assert first["markers"] == [["m", 6.5095, 3.3711, 0.0]]
    # 3 m north-east, still inside s14mh9nb
    live.apply([Ping("m", 6.50952, 3.37112, t + 1000, heading=45.0)], t + 1000)
    moved = json.loads(ws.recv())
    assert moved["cells"] == [["s14mh9nb", 1]]
    assert moved["markers"] == [["m", 6.50952, 3.37112, 45.0]]
    ws.close()
    client.close()
