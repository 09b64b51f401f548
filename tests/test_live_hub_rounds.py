"""The live hub's rounds (app.live_hub.LiveHub.build_and_deliver) assemble each view's
frame from pre-encoded parts; every socket must still get, byte for byte, the frame of
the plain path (build_frame + with_live_markers, as /api/live builds it) for the same
counts at the same instant — on real Redis, for scattered views at every precision,
boxes on cell and bucket edges, the whole world, boxes too big for a cover, and the
markers' cap — and nothing when nothing a viewer sees changed."""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
import redis

from app import live_hub
from app.live_counts import LiveCounts
from app.live_hub import LiveHub, Subscription, with_live_markers
from app.ping import Ping
from app.settings import Settings
from app.ws_frames import WireMessage
from replay.heat import BBox, View, build_frame, cell_bounds

LAGOS = (3.10, 6.40, 3.70, 6.70)


def without_t(payload: str) -> str:
    return re.sub(r'"t":"[^"]*"', "", payload, count=1)


@pytest.fixture
def hub_settings(base_settings: Settings) -> Iterator[Settings]:
    s = base_settings.with_(redis_prefix=f"hub{uuid.uuid4().hex[:8]}", live_window_s=30.0)
    yield s
    client = redis.Redis.from_url(s.redis_url)
    pattern = s.redis_key_prefix.replace("{", "\\{").replace("}", "\\}") + "*"
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def fleet(rnd: random.Random, drivers: int, t: int, step: int) -> list[Ping]:
    """Drivers spread over Lagos, each ~55 m further along its heading every step (some
    without a heading); a few are parked on exact cell corners."""
    west, south, east, north = LAGOS
    out = []
    for n in range(drivers):
        spot = random.Random(n)
        lat = south + spot.random() * (north - south)
        lon = west + spot.random() * (east - west)
        if n % 97 == 0:
            lon, lat = cell_bounds("s14mh9")[:2]
        heading = None if n % 7 == 0 else round(spot.random() * 360, 1)
        d = 0.0005 * step * (spot.random() - 0.5)
        out.append(Ping(f"drv-{n:05d}", round(lat + d, 6), round(lon + d, 6), t, 30.0, heading))
    rnd.shuffle(out)
    return out


def scattered_views(rnd: random.Random, count: int, unbounded: bool = True) -> list[View]:
    west, south, east, north = LAGOS
    views = [View(5, BBox(*LAGOS))]
    if unbounded:  # the whole world; a box too big for a cover (the plain path)
        views += [View(7), View(8, BBox(2.0, 5.0, 5.0, 8.0))]
    for cell in ("s14mh9", "s14mh", "s14m"):  # boxes exactly on bucket edges
        w, s, e, n = cell_bounds(cell)
        views += [View(7, BBox(w, s, e, n)), View(6, BBox(e, s, e + 0.05, n))]
    for _ in range(count):
        size = rnd.choice((0.01, 0.05, 0.1, 0.2))
        w = west + rnd.random() * (east - west - size)
        s = south + rnd.random() * (north - south - size)
        views.append(View(rnd.choice((5, 6, 7, 8)), BBox(w, s, w + size, s + size / 2)))
    return views


@pytest.mark.parametrize(
    "cap,min_precision,unbounded",
    [(500, 7, True), (40, 7, True), (0, 7, True), (500, 5, True), (500, 7, False)],
    ids=["500", "40", "0", "p5", "bounded"],  # bounded: street zoom read around the boxes
)
def test_every_socket_gets_the_plain_frame_byte_for_byte(
    hub_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    cap: int,
    min_precision: int,
    unbounded: bool,
) -> None:
    settings = hub_settings.with_(markers_max=cap, markers_min_precision=min_precision)
    client = redis.Redis.from_url(settings.redis_url)
    live = LiveCounts(client, settings)
    rnd = random.Random(cap * 10 + min_precision)
    clock = [int(time.time() * 1000)]
    monkeypatch.setattr(live_hub, "_now_ms", lambda: clock[0])
    live.apply(fleet(rnd, 2000, clock[0], 0), clock[0])
    hub = LiveHub(client, settings)
    subs = [Subscription(view) for view in scattered_views(rnd, 120, unbounded)]
    subs.append(Subscription(subs[-1].view))  # two sockets on one view
    for sub in subs:
        hub._attach(sub)  # the frame on connect (the plain path)
    assert all(len(sub.mailbox.take(0)) == 1 for sub in subs)

    # nothing changed: the first round sends nothing (the pre-encoded parts compare
    # equal to the plain connect frame's)
    clock[0] += 10
    hub.build_and_deliver()
    assert [sub.mailbox.take(0) for sub in subs] == [[]] * len(subs)

    markers_seen = unchanged = 0
    for step in (1, 2, 3):
        clock[0] += 500
        live.apply(fleet(rnd, 2000, clock[0], step), clock[0])
        hub.build_and_deliver()
        for sub in subs:
            view = sub.view
            expected = live_hub._dumps(
                with_live_markers(
                    live,
                    settings,
                    view,
                    build_frame(live.cells(view.precision, clock[0]), view, clock[0], "live"),
                )
            )
            got = sub.mailbox.take(0)
            if not got:  # nothing the viewer sees changed since its last frame
                unchanged += 1
                got = [hub._last_payload[live_hub.view_key(view)]]
            assert isinstance(got[0], WireMessage)
            assert without_t(got[0].text) == without_t(expected), view
            markers_seen += '"markers":[[' in expected
    client.close()
    assert unchanged < len(subs)  # the fleet moves: most frames change every round
    if cap:
        assert markers_seen > 20


def test_a_driver_moving_inside_its_cell_moves_its_marker(
    hub_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(hub_settings.redis_url)
    live = LiveCounts(client, hub_settings)
    t = int(time.time() * 1000)
    monkeypatch.setattr(live_hub, "_now_ms", lambda: t)
    live.apply([Ping("a", 6.5095, 3.3711, t, heading=90.0)], t)  # s14mh9nb
    hub = LiveHub(client, hub_settings)
    sub = Subscription(View(7, BBox(3.36, 6.50, 3.385, 6.52)))
    hub._attach(sub)
    (first,) = sub.mailbox.take(0)
    assert isinstance(first, WireMessage)
    assert '"markers":[["a",6.5095,3.3711,90.0]]' in first.text
    live.apply([Ping("a", 6.5096, 3.3712, t + 1, heading=91.0)], t + 1)  # same cells
    hub.build_and_deliver()
    (message,) = sub.mailbox.take(0)
    assert isinstance(message, WireMessage)
    frame = message.text
    assert '"cells":[["s14mh9n",1]]' in frame and '"markers":[["a",6.5096,3.3712,91.0]]' in frame
    client.close()


def test_many_street_views_read_around_one_box_holding_them_all() -> None:
    few = [BBox(3.3, 6.5, 3.4, 6.55), BBox(3.5, 6.6, 3.6, 6.65)]
    assert live_hub._near(list(few)) == few
    many: list[BBox | None] = [BBox(3.1 + i / 100, 6.4, 3.2 + i / 100, 6.5) for i in range(40)]
    assert live_hub._near(many) == [BBox(3.1, 6.4, 3.2 + 39 / 100, 6.5)]
    assert live_hub._near([*many, None])[-1] is None  # a whole-world view: read all


def test_a_failing_round_or_socket_does_not_end_the_hub(
    hub_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub thread serves every live socket of a web process. A round that raised
    anything but a Redis error used to end it for good: every socket stayed open and got
    no frame again. One socket whose mailbox raises must not cost the others theirs."""
    from app.live_hub import Mailbox

    client = redis.Redis.from_url(hub_settings.redis_url)
    live = LiveCounts(client, hub_settings)
    t = int(time.time() * 1000)
    live.apply([Ping("a", 6.5095, 3.3711, t)], t)
    hub = LiveHub(client, hub_settings)
    view = View(6, BBox(*LAGOS))

    class Broken(Mailbox):
        frames = 0

        def put_frame(self, payload: WireMessage) -> int:
            self.frames += 1
            if self.frames > 1:  # every round's frame after the one on connect
                raise RuntimeError("can't start new thread")
            return super().put_frame(payload)

    rounds: list[int] = []
    real_round = hub.build_and_deliver

    def first_round_fails() -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug in a round")
        return real_round()

    monkeypatch.setattr(hub, "build_and_deliver", first_round_fails)
    broken = hub.subscribe(view, Broken())
    healthy = hub.subscribe(view)
    assert len(broken.mailbox.take(0)) == 1 and len(healthy.mailbox.take(0)) == 1
    try:
        deadline = time.monotonic() + 15
        got: list[object] = []
        while time.monotonic() < deadline and not got:
            live.apply([Ping("b", 6.55, 3.40, int(time.time() * 1000))], int(time.time() * 1000))
            hub._dirty.set()
            got = healthy.mailbox.take(0.5)
        assert len(rounds) >= 2, "no round after the failing one"
        assert got and '"s14mh' in got[-1].text  # type: ignore[attr-defined]
        assert cast(Broken, broken.mailbox).frames > 1  # its round raised, the other got it
        assert hub._thread is not None and hub._thread.is_alive()
    finally:
        hub.stop()
        client.close()
