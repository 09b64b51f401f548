"""Individual drivers at street zoom (SPEC extension: frames carry ``markers``): exactly
the drivers the heat counts, with their latest position and heading, capped per frame."""

from __future__ import annotations

import time

import pytest
import redis

from app.live_counts import LiveCounts
from app.live_hub import with_live_markers
from app.ping import Ping
from replay.heat import View, build_frame, parse_bbox

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA3 = (6.5101, 3.3716)  # s14mh9ph
IKEJA = (6.6018, 3.3515)  # s14ms3b6
STREET = parse_bbox("3.36,6.50,3.385,6.52")


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
