"""The simulator: deterministic, SPEC-valid, plausible movement, the daily rhythm, backfill
batching and the posting rules. Pure: no server, the HTTP session is a stand-in."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
import requests

from app.lagos import LAGOS_BBOX, LAGOS_TZ, NEIGHBOURHOODS
from app.simulate import (
    MAX_BATCH,
    Fleet,
    IngestRejected,
    IngestUnavailable,
    SimPing,
    active_fraction,
    iter_backfill,
    local_hour,
    post_batches,
    run_simulate,
)

# A Friday in Lagos, midnight local time.
DAY = datetime(2026, 11, 20, tzinfo=LAGOS_TZ)

# --------------------------------------------------------------------- SPEC check

DRIVER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
FIELDS = {"driver_id", "lat", "lon", "ts", "speed_kmh", "heading"}


def spec_problems(ping: dict[str, Any]) -> list[str]:
    """SPEC "The ping", as the server checks it, on the JSON the simulator sends."""
    problems = []
    if set(ping) - FIELDS:
        problems.append(f"unknown fields {set(ping) - FIELDS}")
    if not {"driver_id", "lat", "lon"} <= set(ping):
        problems.append("missing required field")
    if not (isinstance(ping.get("driver_id"), str) and DRIVER_ID.match(ping["driver_id"])):
        problems.append("driver_id")
    for name, lo, hi in (("lat", -90, 90), ("lon", -180, 180)):
        v = ping.get(name)
        if not (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and lo <= v <= hi
        ):
            problems.append(name)
    ts = ping.get("ts")
    if not (isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0):
        problems.append("ts must be epoch ms int")
    speed = ping.get("speed_kmh")
    if speed is not None and not (
        isinstance(speed, int | float) and math.isfinite(speed) and speed >= 0
    ):
        problems.append("speed_kmh")
    heading = ping.get("heading")
    if heading is not None and not (
        isinstance(heading, int | float) and math.isfinite(heading) and 0 <= heading < 360
    ):
        problems.append("heading")
    return problems


def as_json(pings: list[SimPing]) -> list[dict[str, Any]]:
    decoded: list[dict[str, Any]] = json.loads(msgspec.json.encode(pings))
    return decoded


def haversine_km(a: SimPing, b: SimPing) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def by_driver(pings: list[SimPing]) -> dict[str, list[SimPing]]:
    out: dict[str, list[SimPing]] = defaultdict(list)
    for p in pings:
        out[p.driver_id].append(p)
    return out


def run_fleet(fleet: Fleet, hours: float, step_s: float = 60.0) -> list[SimPing]:
    pings: list[SimPing] = []
    for _ in range(round(hours * 3600 / step_s)):
        pings.extend(fleet.step(step_s))
    return pings


@pytest.fixture(scope="module")
def evening() -> list[SimPing]:
    """Two busy hours (17-19h local) of 120 drivers pinging every 5 s."""
    return run_fleet(Fleet(120, seed=7, start=DAY + timedelta(hours=17)), hours=2)


@pytest.fixture(scope="module")
def whole_day() -> list[SimPing]:
    """A simulated day of 200 drivers pinging every 30 s."""
    return run_fleet(Fleet(200, seed=3, start=DAY, ping_interval=30.0), hours=24, step_s=600)


# ---------------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_pings_and_another_seed_does_not() -> None:
    start = DAY + timedelta(hours=8)
    first = run_fleet(Fleet(40, seed=11, start=start), hours=0.5)
    again = run_fleet(Fleet(40, seed=11, start=start), hours=0.5)
    other = run_fleet(Fleet(40, seed=12, start=start), hours=0.5)
    assert len(first) > 1000
    assert first == again
    assert first != other
    assert {p.ts for p in first} != {p.ts for p in other}  # different staggering too


def test_pings_do_not_depend_on_how_time_is_stepped() -> None:
    start = DAY + timedelta(hours=7, minutes=30)
    coarse = run_fleet(Fleet(30, seed=5, start=start), hours=0.5, step_s=600)
    fine = run_fleet(Fleet(30, seed=5, start=start), hours=0.5, step_s=6)
    fleet = Fleet(30, seed=5, start=start)
    odd = fleet.step(1.5) + fleet.step(0) + fleet.step(1798.5)
    assert coarse == fine == odd


def test_a_driver_pings_the_same_whatever_the_fleet_size() -> None:
    start = DAY + timedelta(hours=18)
    small = by_driver(run_fleet(Fleet(10, seed=9, start=start), hours=0.25))
    large = by_driver(run_fleet(Fleet(50, seed=9, start=start), hours=0.25))
    assert small and all(small[d] == large[d] for d in small)


def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Fleet(3, seed=1, start=datetime(2026, 11, 20))


# ------------------------------------------------------------------- the ping rules


def test_every_ping_satisfies_the_spec(evening: list[SimPing], whole_day: list[SimPing]) -> None:
    for ping in as_json(evening) + as_json(whole_day):
        assert spec_problems(ping) == [], ping
        assert set(ping) == FIELDS
    ids = {p.driver_id for p in evening}
    assert ids <= {f"drv-{i:04d}" for i in range(1, 121)}
    assert len(ids) > 80  # the evening rush: most of the fleet is out


def test_driver_ids_widen_for_big_fleets() -> None:
    fleet = Fleet(12_345, seed=1, start=DAY + timedelta(hours=18))
    ids = {p.driver_id for p in fleet.step(5)}
    assert "drv-00001" in ids or min(ids).startswith("drv-0000")
    assert all(DRIVER_ID.match(i) and len(i) == 9 for i in ids)


def test_online_drivers_ping_once_per_interval_staggered() -> None:
    fleet = Fleet(200, seed=2, start=DAY + timedelta(hours=18))
    pings = fleet.step(5.0)
    assert len({p.driver_id for p in pings}) == len(pings)  # once each per interval
    # spread over the interval, not a burst in one second
    per_second = Counter((p.ts - fleet.now_ms) // 1000 for p in pings)
    assert len(per_second) == 5 and max(per_second.values()) < 0.35 * len(pings)
    assert len({p.ts for p in pings}) > 0.9 * len(pings)


def test_positions_stay_in_greater_lagos(evening: list[SimPing], whole_day: list[SimPing]) -> None:
    west, south, east, north = LAGOS_BBOX
    for p in evening + whole_day:
        assert west <= p.lon <= east and south <= p.lat <= north, p
    # and they really spread over the city, not one spot
    assert max(p.lon for p in evening) - min(p.lon for p in evening) > 0.2
    assert max(p.lat for p in evening) - min(p.lat for p in evening) > 0.1


# ------------------------------------------------------------------------ movement


def test_implied_speeds_are_plausible(evening: list[SimPing]) -> None:
    implied = []
    for pings in by_driver(evening).values():
        for a, b in itertools.pairwise(pings):
            assert b.ts > a.ts
            hours = (b.ts - a.ts) / 3_600_000
            implied.append(haversine_km(a, b) / hours)
    assert len(implied) > 10_000
    assert max(implied) < 120.0
    moving = sorted(v for v in implied if v > 3.0)
    assert moving and 10.0 < moving[len(moving) // 2] < 45.0


def test_reported_speed_matches_the_movement(evening: list[SimPing]) -> None:
    close = total = 0
    for pings in by_driver(evening).values():
        for a, b in itertools.pairwise(pings):
            if a.speed_kmh > 5.0 and b.speed_kmh > 5.0:
                implied = haversine_km(a, b) / ((b.ts - a.ts) / 3_600_000)
                total += 1
                close += abs(implied - (a.speed_kmh + b.speed_kmh) / 2) < 10.0
    assert total > 1000 and close > 0.9 * total


def test_drivers_dwell_and_travel_between_neighbourhoods(evening: list[SimPing]) -> None:
    dwelling = sum(p.speed_kmh == 0.0 for p in evening)
    assert 0.1 * len(evening) < dwelling < 0.7 * len(evening)
    centres = [(n.lat, n.lon) for n in NEIGHBOURHOODS]

    def nearest(p: SimPing) -> int:
        return min(range(len(centres)), key=lambda i: math.dist(centres[i], (p.lat, p.lon)))

    visited = {d: {nearest(p) for p in ps[::60]} for d, ps in by_driver(evening).items()}
    assert sum(len(v) >= 2 for v in visited.values()) > 0.5 * len(visited)


def test_rush_hour_is_slower_than_midday() -> None:
    def median_moving_speed(start_hour: int) -> float:
        fleet = Fleet(80, seed=4, start=DAY + timedelta(hours=start_hour))
        speeds = sorted(p.speed_kmh for p in run_fleet(fleet, hours=1) if p.speed_kmh > 0)
        return speeds[len(speeds) // 2]

    rush, midday = median_moving_speed(18), median_moving_speed(13)
    assert 12.0 < rush < midday < 50.0
    assert rush < 0.8 * midday


# -------------------------------------------------------------------- daily rhythm


def test_active_fraction_has_two_rush_hours_and_quiet_nights() -> None:
    curve = {h / 4: active_fraction(h / 4) for h in range(96)}
    assert all(0.0 < f <= 1.0 for f in curve.values())
    morning = max((h for h in curve if 6 <= h <= 10), key=curve.__getitem__)
    evening = max((h for h in curve if 16 <= h <= 21), key=curve.__getitem__)
    assert 7 <= morning <= 9 and 17 <= evening <= 20
    assert curve[evening] > curve[morning] > 2 * curve[13.0]
    assert max(curve[h] for h in curve if 1 <= h < 4) < 0.1
    assert active_fraction(25.0) == active_fraction(1.0)
    assert local_hour(DAY.timestamp()) == 0.0  # Lagos is UTC+1


def test_pings_per_hour_follow_the_daily_rhythm(whole_day: list[SimPing]) -> None:
    per_hour = Counter(int(local_hour(p.ts / 1000)) for p in whole_day)
    counts = [per_hour[h] for h in range(24)]
    peak_hour = max(range(24), key=counts.__getitem__)
    morning_peak = max(range(6, 10), key=counts.__getitem__)
    assert 16 <= peak_hour < 21  # the strongest peak is the evening one
    # the second peak is the morning one: higher than any hour outside both windows
    outside = [counts[h] for h in range(24) if not (6 <= h < 10 or 16 <= h < 21)]
    assert counts[morning_peak] > 1.5 * max(outside)
    assert counts[peak_hour] > counts[morning_peak]
    quietest = min(range(24), key=counts.__getitem__)
    assert 1 <= quietest < 4
    assert max(counts[1:4]) < 0.2 * counts[peak_hour]


# ------------------------------------------------------------------------- backfill


def test_backfill_batches_cover_the_window() -> None:
    start = DAY + timedelta(hours=17)
    end = start + timedelta(minutes=50)
    fleet = Fleet(100, seed=8, start=start, ping_interval=10.0)
    batches = list(iter_backfill(fleet, start, end, 10.0))
    expected = run_fleet(Fleet(100, seed=8, start=start, ping_interval=10.0), hours=50 / 60)

    total = sum(len(b) for b in batches)
    assert total == len(expected) > 2 * MAX_BATCH
    assert len(batches) == math.ceil(total / MAX_BATCH)
    assert all(len(b) == MAX_BATCH for b in batches[:-1]) and 0 < len(batches[-1]) <= MAX_BATCH
    flat = [p for b in batches for p in b]
    assert flat == expected
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    assert all(start_ms <= p.ts < end_ms for p in flat)
    for pings in by_driver(flat).values():
        assert all(a.ts < b.ts for a, b in itertools.pairwise(pings))
        # every 10 s while online, never faster
        assert all(b.ts - a.ts >= 10_000 for a, b in itertools.pairwise(pings))


def test_backfill_batches_never_exceed_the_limit_even_for_a_huge_fleet() -> None:
    start = DAY + timedelta(hours=18)
    fleet = Fleet(8_000, seed=1, start=start)
    batches = list(iter_backfill(fleet, start, start + timedelta(seconds=20), 10.0, chunk_s=20))
    assert len(batches) >= 2 and max(len(b) for b in batches) <= MAX_BATCH
    # a full batch fits the server's 4 MiB request limit with room to spare
    assert len(msgspec.json.encode(batches[0])) < 2 * 1024 * 1024


def test_backfill_rejects_bad_windows() -> None:
    start = DAY + timedelta(hours=12)
    fleet = Fleet(3, seed=1, start=start)
    with pytest.raises(ValueError):
        next(iter_backfill(fleet, start, start, 10.0))
    fleet.step(60)
    with pytest.raises(ValueError, match="past"):
        next(iter_backfill(fleet, start, start + timedelta(hours=1), 10.0))


# -------------------------------------------------------------------------- posting


class FakeResponse(requests.Response):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__()
        self.status_code = status
        self._content = json.dumps(body).encode() if body is not None else b""
        self.headers.update(headers or {})


class FakeSession(requests.Session):
    """Answers from a script of responses/exceptions, then 202 for everything."""

    def __init__(self, script: list[FakeResponse | Exception] | None = None) -> None:
        super().__init__()
        self.script = list(script or [])
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str | bytes, data: Any = None, json: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        self.calls.append((str(url), data, dict(kw["headers"])))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return FakeResponse(202, {"accepted": len(msgspec.json.decode(data))})

    def posted(self) -> list[dict[str, Any]]:
        return [p for _, body, _ in self.calls for p in json.loads(body)]


def some_pings(n: int) -> list[SimPing]:
    return [SimPing(f"drv-{i:04d}", 6.5, 3.4, 1_700_000_000_000 + i, 10.0, 90.0) for i in range(n)]


def test_post_batches_sends_json_arrays_with_the_token() -> None:
    session = FakeSession()
    seen: list[tuple[int, int]] = []
    sent = post_batches(
        "http://h/api/pings",
        "tok",
        [some_pings(12_000), some_pings(3)],
        lambda total, batch: seen.append((total, len(batch))),
        session=session,
    )
    assert sent == 12_003
    assert [len(json.loads(body)) for _, body, _ in session.calls] == [5000, 5000, 2000, 3]
    assert seen == [(5000, 5000), (10000, 5000), (12000, 2000), (12003, 3)]
    url, body, headers = session.calls[0]
    assert url == "http://h/api/pings"
    assert headers == {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    assert json.loads(body)[0] == {
        "driver_id": "drv-0000",
        "lat": 6.5,
        "lon": 3.4,
        "ts": 1_700_000_000_000,
        "speed_kmh": 10.0,
        "heading": 90.0,
    }


def test_post_batches_retries_unavailable_and_connection_errors() -> None:
    session = FakeSession(
        [
            FakeResponse(503, {"error": "broker_unavailable"}, {"Retry-After": "2"}),
            requests.ConnectionError("refused"),
            FakeResponse(429, {"error": "slow_down"}, {"Retry-After": "0.5"}),
        ]
    )
    waits: list[float] = []
    assert (
        post_batches(
            "http://h/api/pings", "t", [some_pings(4)], session=session, sleep=waits.append
        )
        == 4
    )
    assert len(session.calls) == 4 and len(session.posted()) == 16  # same body resent
    assert waits[0] == 2.0 and 0.75 <= waits[1] <= 1.0 and waits[2] == 0.5


def test_post_batches_gives_up_after_bounded_retries() -> None:
    session = FakeSession([requests.ConnectionError("refused")] * 10)
    waits: list[float] = []
    with pytest.raises(IngestUnavailable, match=r"after 3 attempts .*ConnectionError"):
        post_batches(
            "http://h/api/pings",
            "t",
            [some_pings(1)],
            session=session,
            max_attempts=3,
            sleep=waits.append,
        )
    assert len(session.calls) == 3 and len(waits) == 2 and waits[1] > waits[0] * 1.2


def test_post_batches_raises_the_servers_reason_on_client_errors() -> None:
    body = {
        "error": "invalid_ping",
        "details": [{"index": 3, "field": "lat", "message": "must be <= 90"}],
    }
    session = FakeSession([FakeResponse(422, body)])
    with pytest.raises(IngestRejected, match=r"422 invalid_ping: #3 lat: must be <= 90") as err:
        post_batches("http://h/api/pings", "t", [some_pings(5)], session=session, sleep=time.sleep)
    assert err.value.status == 422 and len(session.calls) == 1  # not retried
    session = FakeSession([FakeResponse(403, {"error": "forbidden", "message": "role ingest"})])
    with pytest.raises(IngestRejected, match="403 forbidden: role ingest"):
        post_batches("http://h/api/pings", "t", [some_pings(5)], session=session)


# --------------------------------------------------------------------- run_simulate


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.t = start.timestamp()

    def __call__(self) -> float:
        return self.t


def test_run_simulate_backfills_the_past_window_with_progress() -> None:
    now = DAY + timedelta(hours=18)
    session = FakeSession()
    out = io.StringIO()
    sent = run_simulate(
        "http://h/",
        "tok",
        drivers=50,
        seed=3,
        backfill=timedelta(minutes=30),
        session=session,
        progress_stream=out,
        clock=FakeClock(now),
    )
    posted = session.posted()
    assert sent == len(posted) > 3000
    assert all(c[0] == "http://h/api/pings" for c in session.calls)
    lo, hi = int((now - timedelta(minutes=30)).timestamp() * 1000), int(now.timestamp() * 1000)
    assert all(lo <= p["ts"] < hi for p in posted)
    last = out.getvalue().strip().splitlines()[-1]
    assert "100.0%" in last and f"{sent:,} pings" in last and "pings/s" in last
    assert "2026-11-20 18:00 WAT" in last


def test_run_simulate_live_posts_real_time_pings_until_the_duration() -> None:
    session = FakeSession()
    before = time.time()
    sent = run_simulate(
        "http://h",
        "tok",
        drivers=400,
        seed=1,
        interval_s=0.1,
        speedup=30.0,
        duration_s=0.45,
        session=session,
        progress_stream=io.StringIO(),
    )
    after = time.time()
    posted = session.posted()
    assert sent == len(posted) > 0 and 2 <= len(session.calls) <= 6
    assert all(before * 1000 - 1 <= p["ts"] <= after * 1000 for p in posted)
    for pings in by_driver([msgspec.convert(p, SimPing) for p in posted]).values():
        assert all(a.ts < b.ts for a, b in itertools.pairwise(pings))


def test_run_simulate_stops_on_the_stop_event() -> None:
    """Stopped once it has posted twice. It used to run 5 drivers and stop after 0.3 s:
    between ~22:00 and 05:00 UTC (night in Lagos) none of the 5 is online, nothing is
    posted, and the test failed by the time of day. 200 drivers keep >= 13 online at
    every hour."""
    stop = threading.Event()
    safety = threading.Timer(20.0, stop.set)  # never hang the suite
    safety.start()
    stopped_at: list[float] = []

    class StopAfterTwo(FakeSession):
        def post(self, url: str | bytes, data: Any = None, json: Any = None, **kw: Any) -> Any:  # type: ignore[override]
            answer = super().post(url, data, json, **kw)
            if len(self.calls) == 2:
                stopped_at.append(time.monotonic())
                stop.set()
            return answer

    session = StopAfterTwo()
    try:
        run_simulate(
            "http://h", "t", drivers=200, interval_s=0.05, stop_event=stop, session=session
        )
    finally:
        safety.cancel()
    assert stopped_at, "the simulator returned before posting twice"
    assert time.monotonic() - stopped_at[0] < 2.0
    assert len(session.calls) in (2, 3)  # at most a post already under way when it stopped


def test_run_simulate_surfaces_a_rejected_token() -> None:
    session = FakeSession([FakeResponse(401, {"error": "unauthorized"})])
    with pytest.raises(IngestRejected, match="401 unauthorized"):
        run_simulate(
            "http://h",
            "bad",
            drivers=20,
            backfill=timedelta(minutes=5),
            session=session,
            progress_stream=io.StringIO(),
            clock=FakeClock(DAY + timedelta(hours=9)),
        )
