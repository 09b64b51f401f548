"""Replay mode in a real browser (Debian Chromium via Playwright), in Lagos time.

A constructed Thursday (2026-11-19) in history, written exactly as the sink writes it
(binary COPY + rollups in one transaction): four drivers on Victoria Island all day,
20 more in Ikeja for the morning rush (07:00-08:00 Lagos), 5 in Surulere at lunch
(13:00-14:00) and 30 for the evening rush (18:00-19:00) who sit in Yaba for the first
half hour and then split between Ikeja (20) and Surulere (10). Everyone pings every
30 s; the replay window W is 60 s, so every driver on the road is always counted.

The page must list exactly those three hours as the busiest, evening first; a click on
the evening peak plays it (clock and heat moving, frames 10 simulated seconds apart),
pause holds the frame, dragging the scrubber shows the heat of the new moment (the
split), play goes on from there. Screenshots: test-output/screenshots/.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from werkzeug.serving import make_server

from app import create_app
from app.auth import mint_token
from app.ping import Ping
from app.postgis_sink import PostgisSink
from app.simulate import Fleet, iter_backfill, run_simulate
from replay.heat import iso_ms
from tests.browser_fixtures import Page, ui  # noqa: F401  (fixture)
from tests.conftest import free_port, wait_until
from tests.replay_support import ensure_days, ms, truncate, write_history

pytestmark = pytest.mark.browser

LAGOS = timezone(timedelta(hours=1), "WAT")  # no DST
LAGOS_DAY = datetime(2026, 11, 18, 23, 0, tzinfo=UTC)  # Thu 19 Nov 00:00 in Lagos (UTC+1)
VI = (6.4281, 3.4219)  # s14kt
IKEJA = (6.6018, 3.3515)  # s14ms
YABA = (6.5095, 3.3711)  # s14mh
SURULERE = (6.4969, 3.3542)  # s14ku
MORNING = LAGOS_DAY + timedelta(hours=7)  # 07:00 Lagos
NOON = LAGOS_DAY + timedelta(hours=13)
EVENING = LAGOS_DAY + timedelta(hours=18)
EVERY_S = 30


def shift(start: datetime, seconds: float) -> int:
    return ms(start) + int(seconds * 1000)


def a_day() -> list[Ping]:
    pings: list[Ping] = []
    for d in range(4):  # all day, on Victoria Island
        for k in range(24 * 3600 // EVERY_S):
            pings.append(Ping(f"bg-{d}", *VI, shift(LAGOS_DAY, k * EVERY_S + d)))
    for group, start, n in (("am", MORNING, 20), ("noon", NOON, 5), ("pm", EVENING, 30)):
        for d in range(n):
            for k in range(3600 // EVERY_S):
                offset = k * EVERY_S + d  # phases spread over the 30 s
                where = {"am": IKEJA, "noon": SURULERE}.get(group)
                if where is None:  # evening: Yaba, then 20 to Ikeja and 10 to Surulere
                    where = YABA if offset < 1800 else (IKEJA if d < 20 else SURULERE)
                pings.append(Ping(f"{group}-{d:02d}", *where, shift(start, offset)))
    return pings


@pytest.fixture
def history_server(settings, db) -> Iterator[tuple[str, str]]:
    truncate(db)
    day = a_day()
    ensure_days(db, ms(LAGOS_DAY), ms(LAGOS_DAY + timedelta(days=1)))
    write_history(db, [day[i : i + 5000] for i in range(0, len(day), 5000)])
    app = create_app(settings.with_(live_window_s=60.0))
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", mint_token(settings, "viewer")
    server.shutdown()
    thread.join(10)
    app.extensions["heatreplay"].close()
    truncate(db)


def t_of(state: dict[str, str]) -> datetime:
    return datetime.fromisoformat(state["t"].replace("Z", "+00:00"))


def frames(ui: Page) -> list[dict[str, Any]]:  # noqa: F811
    return [m for m in ui.received if m.get("type") == "frame" and m.get("mode") == "replay"]


def test_peaks_listed_play_pause_scrub_play(ui: Page, history_server):  # noqa: F811
    base, token = history_server
    day_from, day_to = iso_ms(ms(LAGOS_DAY)), iso_ms(ms(LAGOS_DAY + timedelta(days=1)))
    ui.page.goto(f"{base}/?mode=replay&from={day_from}&to={day_to}&token={token}")
    ui.wait_state(mode="replay", state="idle")

    # the day's busiest hours, busiest first, in Lagos time with exact ping counts
    peaks = ui.page.locator("#peaks .peak")
    peaks.first.wait_for(timeout=10_000)
    assert peaks.all_inner_texts() == [
        "1 Thu 18:00–19:00 · 4,080 pings",  # 30 × 120 + the 4 all-day drivers' 480
        "2 Thu 07:00–08:00 · 2,880 pings",  # 20 × 120 + 480
        "3 Thu 13:00–14:00 · 1,080 pings",  # 5 × 120 + 480
    ]
    assert peaks.first.get_attribute("title") == "34 drivers — replay this hour"
    assert "18,120 pings in range" in ui.text("#replay-note")
    ui.shot("1-peaks")

    # play the evening peak: the clock runs in Lagos time, the heat is Yaba's 30 + VI's 4
    peaks.first.click()
    playing = ui.wait_state(
        state="replaying",
        t=lambda t: t >= iso_ms(shift(EVENING, 120)),
        total=34,
        cells=2,
        max=30,
    )
    assert EVENING < t_of(playing) < EVENING + timedelta(hours=1)
    assert ui.text("#clock-date") == "Thu 19 Nov 2026"
    assert ui.text("#clock-time").startswith("18:")
    assert ui.page.get_attribute("#play-pause", "aria-label") == "Pause"
    assert ui.heat_pixels() > 1000
    ui.shot("2-playing-yaba")
    # smooth: every frame so far is the next 10 s step, none skipped, none repeated
    ts = [datetime.fromisoformat(f["t"].replace("Z", "+00:00")) for f in frames(ui)]
    assert ts[0] == EVENING
    assert all(b - a == timedelta(seconds=10) for a, b in itertools.pairwise(ts)), ts

    # pause: the frame and the clock hold
    ui.page.click("#play-pause")
    paused = ui.wait_state(state="paused")
    clock = ui.text("#clock-time")
    ui.page.wait_for_timeout(700)  # at 60x, 700 ms would be four more frames
    held = ui.state()
    assert (held["t"], held["frames"]) == (paused["t"], paused["frames"])
    assert ui.text("#clock-time") == clock
    assert ui.page.get_attribute("#play-pause", "aria-label") == "Play"
    ui.shot("3-paused")

    # drag the scrubber to three quarters of the hour: after 18:30 the drivers have
    # split between Ikeja (20) and Surulere (10); still paused, the new moment is shown
    bar = ui.page.locator("#scrubber").bounding_box()
    y = bar["y"] + bar["height"] / 2
    fraction = (t_of(paused) - EVENING) / timedelta(hours=1)
    ui.page.mouse.move(bar["x"] + 8 + (bar["width"] - 16) * fraction, y)
    ui.page.mouse.down()
    ui.page.mouse.move(bar["x"] + bar["width"] * 0.5, y, steps=4)
    ui.page.mouse.move(bar["x"] + 8 + (bar["width"] - 16) * 0.75, y, steps=4)
    ui.page.mouse.up()
    scrubbed = ui.wait_state(
        state="paused",
        t=lambda t: iso_ms(shift(EVENING, 2400)) <= t <= iso_ms(shift(EVENING, 3000)),
        total=34,
        cells=3,
        max=20,
    )
    # frames of the drag's earlier seeks may show first; the page rests on the last one,
    # sent within the page's seek interval (100 ms) of the release
    ui.page.wait_for_timeout(300)
    last_seek = ui.poll(lambda: [m for m in ui.sent if m.get("op") == "seek"][-1:])[0]["t"]
    scrubbed = ui.wait_state(state="paused", t=iso_ms(last_seek), total=34, cells=3, max=20)
    assert ui.text("#clock-time").startswith("18:4")
    assert [m["op"] for m in ui.sent][-1] == "seek"
    ui.shot("4-scrubbed-split")

    # still paused, zoom in: the same moment is drawn again at the finer precision
    before = int(scrubbed["precision"])
    for _ in range(2):
        zoom = ui.page.evaluate("() => heatreplay.map.getZoom()") + 1
        ui.page.click(".leaflet-control-zoom-in")
        ui.page.wait_for_function(
            "(z) => heatreplay.map.getZoom() === z && !heatreplay.map._animatingZoom", arg=zoom
        )
    finer = int(ui.text("#precision-note").rsplit(" ", 1)[1])
    assert finer > before
    zoomed = ui.wait_state(state="paused", precision=finer, t=scrubbed["t"])
    assert int(zoomed["frames"]) > int(scrubbed["frames"])
    ui.shot("4b-paused-zoomed")

    # play on from there
    ui.page.click("#play-pause")
    ui.wait_state(state="replaying", t=lambda t: t > scrubbed["t"])
    ui.shot("5-playing-on")


def test_simulated_backfill_day_lists_its_morning_and_evening_peaks(
    ui: Page,  # noqa: F811
    settings,
    db,
    served,
    run_in_background,
):
    """`heatreplay simulate --backfill 24h`, smaller (30 drivers, a ping a minute) but
    through the whole real path: POST /api/pings -> Kafka -> the PostGIS sink."""
    truncate(db)
    sink = PostgisSink(settings)
    run_in_background(sink)
    end_s = time.time()
    token_ingest = mint_token(settings, "ingest")
    sent = run_simulate(
        served.http,
        token_ingest,
        drivers=30,
        seed=42,
        backfill=timedelta(hours=24),
        backfill_interval_s=60.0,
        progress_stream=io.StringIO(),
        clock=lambda: end_s,
    )
    wait_until(lambda: sink.stats.rows >= sent, timeout=60)
    assert sink.stats.rows == sent

    # what the page must list, from the simulator's own pings: busiest hours on the
    # minute grid, non-overlapping, then the ones >= 3 h apart (web/js/timeline.js)
    end = datetime.fromtimestamp(end_s, UTC)
    start = end - timedelta(hours=24)
    fleet = Fleet(30, 42, start, ping_interval=60.0)
    per_minute = Counter(p.ts // 60_000 for b in iter_backfill(fleet, start, end, 60.0) for p in b)
    assert sum(per_minute.values()) == sent
    # the page's range inputs hold minutes (datetime-local): it asks from the minute
    # holding `start`, so a window may start there (then it counts that minute's pings,
    # all at or after `start`); this mattered only when the run's time of day put a
    # rush hour at the range's first minute
    first, last = ms(start) // 60_000, ms(end) // 60_000 - 60
    windows = sorted(
        ((sum(per_minute[m] for m in range(s, s + 60)), s) for s in range(first, last + 1)),
        key=lambda w: (-w[0], w[1]),
    )
    chosen: list[tuple[int, int]] = []
    for pings, s in windows:
        if len(chosen) == 12 or pings == 0:
            break
        if all(abs(s - c) >= 60 for _, c in chosen):
            chosen.append((pings, s))
    shown: list[tuple[int, int]] = []
    for pings, s in chosen:
        if len(shown) < 3 and all(abs(s - c) >= 180 for _, c in shown):
            shown.append((pings, s))

    def label(pings: int, s: int) -> str:
        a = datetime.fromtimestamp(s * 60, LAGOS)
        b = a + timedelta(hours=1)
        return f"{a:%a} {a:%H:%M}–{b:%H:%M} · {pings:,} pings"

    ui.page.goto(
        f"{served.http}/?mode=replay&from={iso_ms(ms(start))}&to={iso_ms(ms(end))}"
        f"&token={mint_token(settings, 'viewer')}"
    )
    peaks = ui.page.locator("#peaks .peak")
    peaks.first.wait_for(timeout=10_000)
    texts = peaks.all_inner_texts()
    assert texts == [f"{i + 1} {label(p, s)}" for i, (p, s) in enumerate(shown)]
    hours = [datetime.fromtimestamp(s * 60, LAGOS).hour for _, s in shown]
    assert any(16 <= h <= 20 for h in hours) and any(6 <= h <= 9 for h in hours), texts
    ui.shot("simulated-day-peaks")


STEPS_HELD = 90  # 3 s of auto-repeat: past the server's burst of 20 plus 20 a second


def test_held_arrow_key_steps_land_where_the_slider_says(ui: Page, history_server):  # noqa: F811
    """A held → repeats faster than the server takes control messages (20 a second):
    the page sends the steps at most ten a second, the newest last, so paused on the
    90th step the frame, clock and slider agree and the server refused nothing."""
    base, token = history_server
    start, end = iso_ms(ms(EVENING)), iso_ms(ms(EVENING + timedelta(hours=1)))
    ui.page.goto(f"{base}/?mode=replay&from={start}&to={end}&token={token}")
    ui.page.locator("#peaks .peak").first.wait_for(timeout=10_000)
    ui.page.locator("#peaks .peak").first.click()
    ui.wait_state(state="replaying")
    ui.page.click("#play-pause")
    paused = ui.wait_state(state="paused")
    for _ in range(STEPS_HELD):  # ~30 presses a second for 3 s, as a key's auto-repeat
        ui.page.keyboard.press("ArrowRight")
        ui.page.wait_for_timeout(33)
    target = iso_ms(ms(t_of(paused)) + STEPS_HELD * 10_000)
    ui.wait_state(state="paused", t=target)
    ui.page.wait_for_timeout(500)  # nothing else arrives afterwards
    assert ui.state()["t"] == target
    refused = [m for m in ui.received if m.get("type") == "error"]
    assert refused == []
    seeks = [m["t"] for m in ui.sent if m.get("op") == "seek"]
    assert seeks[-1] == ms(t_of(paused)) + STEPS_HELD * 10_000
    assert len(seeks) <= STEPS_HELD // 2  # throttled
