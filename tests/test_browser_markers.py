"""Individual drivers in a real browser (Debian Chromium via Playwright).

Live state is written with LiveCounts.apply (what the live worker does) and the same
pings into PostGIS (what the sink does, for the trail). The page, zoomed in to street
level, draws exactly the counted drivers as markers; a driver that moves glides there
(positions strictly between old and new are drawn on the way); clicking a marker opens
the panel with its id and speed and draws its trail from the path endpoint. Replay at t
shows the same markers from PostGIS and follows a driver at t.

Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import time

import pytest
import redis

from app import create_app
from app.auth import mint_token
from app.live_counts import LiveCounts
from app.ping import Ping
from replay.heat import iso_ms
from tests.browser_fixtures import Page, ui  # noqa: F401  (fixture)
from tests.conftest import ServedApp
from tests.replay_support import ensure_days, write_history

pytestmark = pytest.mark.browser

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA3 = (6.5101, 3.3716)  # s14mh9ph
MOVED = (6.5095, 3.3718)  # s14mh9ny: ~80 m east of YABA, another geohash-8 cell
IKEJA = (6.6018, 3.3515)  # s14ms3b6: off screen at street zoom
CENTRE = (6.5098, 3.3713)
WINDOW_S = 300.0  # long enough that nothing leaves the window while the test runs


@pytest.fixture
def street(settings, db):
    s = settings.with_(live_window_s=WINDOW_S)
    app = create_app(s)
    server = ServedApp(app)
    client = redis.Redis.from_url(s.redis_url)
    yield s, server, LiveCounts(client, s)
    server.close()
    app.extensions["heatreplay"].close()
    client.close()


def to_street(page: Page) -> None:
    page.page.evaluate("([lat, lon]) => heatreplay.map.setView([lat, lon], 16)", list(CENTRE))
    page.page.wait_for_function("() => !heatreplay.map._animatingZoom")


def test_zoom_in_sees_the_drivers_clicks_one_and_sees_its_trail(
    ui: Page,  # noqa: F811
    street,
    db,
):
    settings, served, live = street
    t = int(time.time() * 1000)
    trail = [
        Ping("drv-a", *IKEJA, t - 240_000, speed_kmh=44.0, heading=180.0),
        Ping("drv-a", *YABA3, t - 120_000, speed_kmh=20.0, heading=200.0),
        Ping("drv-a", *YABA, t - 2000, speed_kmh=31.5, heading=90.0),
    ]
    others = [Ping("drv-b", *YABA3, t - 1500), Ping("drv-c", *IKEJA, t - 1000, heading=0.0)]
    ensure_days(db, t - 300_000, t + 60_000)
    write_history(db, [trail, others])
    live.apply([trail[-1], *others], t)

    ui.page.goto(f"{served.http}/?token={mint_token(settings, 'viewer')}&tiles=none")
    city = ui.wait_state(state="live", total=3, precision=5)
    assert city["markers"] == "0"  # the city view: heat only
    to_street(ui)
    ui.wait_state(precision=7, total=2, markers=2)
    assert ui.page.evaluate("heatreplay.markers()") == ["drv-a", "drv-b"]
    states = {m["id"]: m for m in ui.page.evaluate("heatreplay.markerState()")}
    assert (states["drv-a"]["lat"], states["drv-a"]["lon"], states["drv-a"]["heading"]) == (
        6.5095,
        3.3711,
        90,
    )
    assert states["drv-b"]["heading"] is None
    assert ui.page.locator(".driver-marker").count() == 2
    assert ui.page.locator('.driver-marker[data-driver="drv-a"] .driver-arrow').count() == 1
    assert ui.page.locator('.driver-marker[data-driver="drv-b"] .driver-dot').count() == 1
    assert ui.text("#count-markers") == "2"
    ui.page.hover('.driver-marker[data-driver="drv-b"]')
    ui.page.wait_for_selector(".leaflet-tooltip:has-text('drv-b')")
    ui.shot("1-street-markers")

    # drv-a moves ~80 m east: the page glides it there, drawing points on the way
    ui.page.evaluate(
        """() => { window.__glide = []; const started = performance.now();
            const sample = () => {
                const a = heatreplay.markerState().find((m) => m.id === 'drv-a');
                if (a) window.__glide.push(a.lon);
                if (performance.now() - started < 4000) requestAnimationFrame(sample);
            };
            requestAnimationFrame(sample); }"""
    )
    moved = Ping("drv-a", *MOVED, t + 500, speed_kmh=33.0, heading=95.0)
    write_history(db, [[moved]])
    live.apply([moved], t + 500)
    ui.poll(lambda: ui.page.evaluate("window.__glide.at(-1)") == MOVED[1])
    lons = ui.page.evaluate("window.__glide")
    between = [x for x in lons if YABA[1] < x < MOVED[1]]
    assert between, f"no intermediate position drawn: {lons[:5]}...{lons[-5:]}"
    assert lons == sorted(lons), "the glide went backwards"

    # click drv-a: the panel names it with its speed, the trail is the path from PostGIS
    ui.page.click('.driver-marker[data-driver="drv-a"]')
    ui.page.wait_for_selector('#driver-panel[data-driver="drv-a"][data-trail-points="4"]')
    assert ui.text("#driver-id") == "drv-a"
    assert ui.text("#driver-speed") == "33 km/h"
    assert ui.text("#driver-heading") == "95° (E)"
    assert ui.text("#driver-trail").startswith("4 pings in 10 min")
    assert ui.page.evaluate("heatreplay.trail()") == [
        list(IKEJA),
        list(YABA3),
        list(YABA),
        list(MOVED),
    ]
    assert ui.page.locator(".leaflet-overlay-pane path").count() == 1  # the trail line
    assert "selected" in ui.page.get_attribute('.driver-marker[data-driver="drv-a"]', "class")
    ui.shot("2-followed-trail")

    # replay at t: the same markers from PostGIS, and the panel follows the driver at t
    ui.page.evaluate("() => heatreplay.setMode('replay')")
    ui.page.evaluate("([a, b]) => heatreplay.replay.openSession(a, b)", [t - 10_000, t])
    ui.wait_state(state="ended", t=iso_ms(t), markers=2, timeout_ms=20_000)
    assert ui.page.evaluate("heatreplay.markers()") == ["drv-a", "drv-b"]
    ui.page.click('.driver-marker[data-driver="drv-a"]')
    # at t drv-a is in Yaba (its move came later): 3 pings in [t - 10 min, t]
    ui.page.wait_for_selector('#driver-panel[data-driver="drv-a"][data-trail-points="3"]')
    assert ui.text("#driver-speed") == "31.5 km/h"
    ui.shot("3-replay-followed")
