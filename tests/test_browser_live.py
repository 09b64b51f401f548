"""Live mode in a real browser (Debian Chromium via Playwright): what a person sees.

- pings posted to the API go through Kafka and the live worker to Redis, then over the
  socket (compressed: Chromium negotiates permessage-deflate) to the page, which draws
  exactly those counts (read from #heat-state, the visible counters and the heat
  canvas's painted pixels) with no base map;
- zooming with the map's + button sends the finer precision to the server, and the
  page draws the frame at that precision;
- the web server killed and started again on the same port: 'reconnecting', then
  'live' again with the counts as they are now;
- refused tokens show why (expired, wrong role); too many sockets backs off.

Screenshots go to test-output/screenshots/ (TEST_OUTPUT overrides test-output).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import jwt
import pytest
import redis
import requests
import websocket

from app.auth import mint_token
from app.live_counts import LiveCounts
from app.live_worker import LiveWorker
from app.ping import Ping
from tests.browser_fixtures import Page, ui  # noqa: F401  (fixture)
from tests.conftest import OUTPUT, ServedApp, free_port, wait_until

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
    # Chromium negotiated compression: what it drew came through app.ws_frames'
    # once-per-view deflated frames
    extensions = ui.page.evaluate("heatreplay.live.socket.ws.extensions")
    assert extensions.startswith("permessage-deflate"), extensions
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


class WebProcess:
    """`python -m app.cli web` (gunicorn) as a process group of its own, so the test can
    kill master and worker at once, as a crash would, and start it again on the port."""

    def __init__(self, settings, port: int, **extra_env: str):
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "HEATREPLAY_ENV": "test",
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_WORKERS": "1",
            "WEB_THREADS": "16",
            "WEB_HTTP_THREADS": "4",
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "HEATREPLAY_REDIS_PREFIX": settings.redis_prefix,
            "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "TOPIC_PINGS": settings.topic_pings,
            "TOPIC_DLQ": settings.topic_dlq,
            "HEATREPLAY_SECRET": settings.secret,
            "LIVE_WINDOW_S": str(settings.live_window_s),
            **extra_env,
        }

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        with open(OUTPUT / f"web-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "web"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "web server exited"
            try:
                return requests.get(f"{self.http}/healthz", timeout=5).status_code in (200, 503)
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_until(ready, timeout=30, interval=0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def web_process(settings):
    web = WebProcess(settings.with_(live_window_s=120.0), free_port())
    yield web
    web.kill()


def test_web_server_killed_and_restarted_shows_reconnecting_then_live(
    ui: Page,  # noqa: F811
    settings,
    web_process: WebProcess,
):
    live = LiveCounts(redis.Redis.from_url(settings.redis_url), settings.with_(live_window_s=120.0))
    live.apply([Ping("a", *YABA, now_ms()), Ping("c", *VI, now_ms())], now_ms())
    web_process.start()
    ui.page.goto(f"{web_process.http}/?token={mint_token(settings, 'viewer')}")
    ui.wait_state(state="live", total=2, cells=2, max=1)
    assert ui.text("#status") == "live"
    ui.shot("1-live")

    web_process.kill()
    ui.wait_state(state="reconnecting")
    assert ui.text("#status") == "reconnecting"
    assert ui.page.locator("#error-panel").is_hidden()  # a restart is not an error
    ui.shot("2-reconnecting")

    # the fleet moves on while the server is down; the reconnected page shows it now
    live.apply([Ping("b", *YABA2, now_ms())], now_ms())
    web_process.start()
    ui.wait_state(state="live", total=3, cells=2, max=2, timeout_ms=20_000)
    assert ui.text("#status") == "live" and ui.text("#count-total") == "3"
    assert len(ui.sockets) >= 2
    ui.shot("3-live-again")


def expired_token(settings) -> str:
    now = int(time.time())
    claims = {"role": "viewer", "sub": "local", "iat": now - 7200, "exp": now - 3600}
    return jwt.encode(claims, settings.secret, algorithm="HS256")


def test_refused_tokens_show_the_servers_reason_and_a_new_token_connects(
    ui: Page,  # noqa: F811
    settings,
    web_process: WebProcess,
):
    # gunicorn, as deployed: werkzeug's dev server garbles the close frame (the browser
    # sees 1006 without the 4401 and its reason), which would test a different path
    web_process.start()
    served = web_process
    ui.page.goto(f"{served.http}/?token={expired_token(settings)}")
    ui.wait_state(state="unauthorised")
    assert ui.page.locator("#auth-panel").is_visible()
    assert ui.text("#auth-reason") == "The server said: token expired"
    assert ui.text("#status") == "unauthorised"
    assert len(ui.sockets) == 1  # a refused token is not retried
    ui.shot("1-token-expired")

    # the person pastes a good token into the panel: the page connects, the panel goes
    ui.page.fill("#auth-token", mint_token(settings, "viewer"))
    ui.page.click("#auth-form button[type=submit]")
    ui.wait_state(state="live", total=0)
    assert ui.page.locator("#auth-panel").is_hidden()

    # replay with an ingest token: refused by the history API, with the reason
    ui.page.goto(f"{served.http}/?mode=replay&token={mint_token(settings, 'ingest')}")
    ui.wait_state(mode="replay", state="unauthorised")
    assert ui.text("#auth-reason") == (
        "The server said: this needs the 'viewer' role; the token has 'ingest'"
    )
    ui.shot("2-replay-wrong-role")


def test_too_many_sockets_backs_off_says_why_and_connects_once_a_slot_frees(
    ui: Page,  # noqa: F811
    settings,
):
    served = WebProcess(settings, free_port(), MAX_SOCKETS_PER_TOKEN="1")
    served.start()
    token = mint_token(settings, "viewer")
    try:
        # another tab holds the token's only socket
        other = websocket.create_connection(
            f"ws://127.0.0.1:{served.port}/ws/live?precision=5&token={token}", timeout=5
        )
        assert json.loads(other.recv())["type"] == "frame"
        ui.page.goto(f"{served.http}/?token={token}")
        ui.wait_state(state="reconnecting")
        toast = ui.page.locator("#toast")
        toast.wait_for(state="visible", timeout=5000)
        assert toast.inner_text() == "this token already has 1 open sockets (limit 1)"
        ui.shot("1-too-many-sockets")
        # the second try comes after the slow 4429 backoff (>= 2 s), not 0.25 s later
        ui.poll(lambda: len(ui.sockets) >= 2, timeout_s=10)
        assert ui.socket_times[1] - ui.socket_times[0] >= 1.8, ui.socket_times
        # refused again: the badge's tooltip says why and when the next try is
        title = ui.poll(
            lambda: "retry in" in (t := ui.page.get_attribute("#status", "title") or "") and t
        )
        assert title.startswith("this token already has 1 open sockets (limit 1); retry in"), title
        assert ui.state()["state"] == "reconnecting"

        other.close()  # the other tab goes away: a later retry gets the slot
        ui.wait_state(state="live", total=0, timeout_ms=15_000)
        gaps = [b - a for a, b in itertools.pairwise(ui.socket_times)]
        assert all(g >= 1.8 for g in gaps), gaps
    finally:
        served.kill()
