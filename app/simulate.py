"""A fleet of simulated Lagos drivers that posts pings to ``POST /api/pings``.

The core (``Fleet``, ``active_fraction``, ``iter_backfill``) is pure and deterministic
for a seed: no clock, no network, no global random state. Every driver owns its own
``random.Random`` seeded from (seed, driver number), so the pings a driver produces do
not depend on how many drivers there are around it or on how time is chopped into steps.

Only ``post_batches`` and ``run_simulate`` touch the network and the wall clock.

A driver is a small state machine, OFFLINE -> DWELL -> DRIVING -> DWELL -> ..., whose
decisions follow the city's daily rhythm in Lagos local time (UTC+1): a driver wants to
be online when the hour's ``active_fraction`` exceeds the driver's own threshold, so
the share of the fleet on the road follows the curve (few at night, a morning peak
around 7-9h and a stronger evening peak around 17-20h). Online drivers ping every
``ping_interval`` seconds, each with its own phase so the fleet's pings spread over the
interval instead of arriving in the same second; dwelling drivers ping too (speed 0),
as a real driver app waiting for a ride does.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

import msgspec
import requests

from app.lagos import BRIDGES, LAGOS_BBOX, LAGOS_TZ, NEIGHBOURHOODS, Neighbourhood

# The server takes up to 10,000 pings / 4 MiB per request; half of that keeps a request
# well under both limits (a ping encodes to ~110 bytes) and keeps retries cheap.
MAX_BATCH = 5_000
DEFAULT_DRIVERS = 300
DEFAULT_LIVE_INTERVAL_S = 5.0
DEFAULT_BACKFILL_INTERVAL_S = 10.0

# Statuses that mean "try again later": broker down (503), rate limited (429) and the
# gateway errors a reverse proxy answers while the app restarts.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_RETRY_WAIT_S = 60.0

# Planar frame around the centre of Lagos; at this scale the error is far below the
# GPS noise we add anyway.
_LAT0, _LON0 = 6.5, 3.4
_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON = 111.320 * math.cos(math.radians(_LAT0))

_OFFLINE, _DWELL, _DRIVING = 0, 1, 2

_GPS_NOISE_KM = 0.004  # ~4 m, a phone's GPS in the open
_MAX_TRIP_KM = 35.0  # nobody takes a ride from Ojo to Sangotedo
_BREAK_PROBABILITY = 0.05  # after a drop-off: food, fuel, prayer


class SimPing(msgspec.Struct, frozen=True):
    """A ping exactly as the driver app sends it (SPEC "The ping"), ``ts`` in epoch ms."""

    driver_id: str
    lat: float
    lon: float
    ts: int
    speed_kmh: float
    heading: float


class SimulateError(RuntimeError):
    """The simulator could not deliver its pings."""


class IngestRejected(SimulateError):
    """The server refused a batch for a reason retrying will not fix (4xx, 5xx != 503)."""

    def __init__(self, url: str, status: int, error: str, detail: str) -> None:
        super().__init__(f"{url} rejected a batch: HTTP {status} {error}{detail}")
        self.status = status
        self.error = error


class IngestUnavailable(SimulateError):
    """The server stayed unavailable (503/connection errors) through every retry."""


# --------------------------------------------------------------------------- rhythm


def local_hour(t_s: float) -> float:
    """Hour of the day in Lagos (UTC+1, no DST) as a float in [0, 24)."""
    return ((t_s + 3600.0) % 86400.0) / 3600.0


def _bump(hour: float, centre: float, width: float) -> float:
    d = (hour - centre + 12.0) % 24.0 - 12.0  # circular: 23h is close to 1h
    return math.exp(-0.5 * (d / width) ** 2)


def active_fraction(local_hour_float: float) -> float:
    """Share of the fleet that wants to be online at this Lagos local hour (0-24).

    ~7% through the night, ~30% at midday, ~75% at the 8h morning peak and ~90% at the
    18:30 evening peak (the evening rush is longer and heavier in Lagos).
    """
    h = local_hour_float % 24.0
    daytime = 1.0 / (1.0 + math.exp(-2.0 * (h - 6.0))) / (1.0 + math.exp(1.5 * (h - 22.5)))
    f = 0.07 + 0.23 * daytime + 0.45 * _bump(h, 8.0, 1.1) + 0.60 * _bump(h, 18.5, 1.4)
    return min(0.95, f)


def congestion(local_hour_float: float) -> float:
    """Multiplier (<= 1) on cruise speeds: go-slow at the rush hours."""
    h = local_hour_float % 24.0
    return max(0.4, 1.0 - 0.45 * _bump(h, 8.0, 1.3) - 0.5 * _bump(h, 18.5, 1.6))


def _kind_boost(n: Neighbourhood, hour: float) -> float:
    # mornings pull towards offices and markets, evenings back home
    m = _bump(hour, 8.5, 1.8)
    e = _bump(hour, 18.5, 2.2)
    if n.kind == "business":
        return 1.0 + 1.5 * m - 0.5 * e
    if n.kind == "residential":
        return 1.0 - 0.4 * m + 1.5 * e
    return 1.0 + 0.3 * m + 0.2 * e


# ------------------------------------------------------------------------- geometry

Point = tuple[float, float]  # (x_km east, y_km north) in the planar frame


def _to_km(lat: float, lon: float) -> Point:
    return ((lon - _LON0) * _KM_PER_DEG_LON, (lat - _LAT0) * _KM_PER_DEG_LAT)


def _to_latlon(p: Point) -> tuple[float, float]:
    west, south, east, north = LAGOS_BBOX
    lat = _LAT0 + p[1] / _KM_PER_DEG_LAT
    lon = _LON0 + p[0] / _KM_PER_DEG_LON
    return min(north, max(south, lat)), min(east, max(west, lon))


def _dist(a: Point, b: Point) -> float:
    return math.hypot(b[0] - a[0], b[1] - a[1])


_CENTRES: tuple[Point, ...] = tuple(_to_km(n.lat, n.lon) for n in NEIGHBOURHOODS)
_BRIDGE_ENDS: tuple[tuple[Point, Point], ...] = tuple(
    (_to_km(*b.mainland), _to_km(*b.island)) for b in BRIDGES
)


class _Trip:
    """A journey along chained quadratic Bézier legs, at a cruise speed that breathes.

    Bridge legs are straight; other legs bow sideways by a random amount, which is the
    "curvature" a road network would give. Along the trip the speed swings ±25% around
    the cruise speed (lights, danfo buses stopping) through a monotonic time warp, so the
    trip still ends exactly at ``t0 + duration``.
    """

    __slots__ = ("_cum", "_k", "_legs", "duration", "end", "length", "t0")

    _WARP = 0.25
    _SAMPLES = 8

    def __init__(
        self,
        points: Sequence[Point],
        straight: Sequence[bool],
        t0: float,
        cruise_kmh: float,
        rng: random.Random,
    ) -> None:
        legs: list[tuple[Point, Point, Point, float]] = []
        cum: list[float] = []
        total = 0.0
        for (a, b), is_straight in zip(itertools.pairwise(points), straight, strict=True):
            d = _dist(a, b)
            mid = ((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0)
            if is_straight or d < 0.05:
                c = mid
            else:
                limit = min(2.5, 0.25 * d)
                off = max(-limit, min(limit, rng.gauss(0.0, 0.12 * d)))
                c = (mid[0] - (b[1] - a[1]) / d * off, mid[1] + (b[0] - a[0]) / d * off)
            length = 0.0
            prev = a
            for i in range(1, self._SAMPLES + 1):
                p = _bezier(a, c, b, i / self._SAMPLES)
                length += _dist(prev, p)
                prev = p
            cum.append(total)
            total += length
            legs.append((a, c, b, length))
        self._legs = legs
        self._cum = cum
        self.length = total
        self.t0 = t0
        self.duration = max(60.0, total / cruise_kmh * 3600.0)
        self.end = points[-1]
        self._k = max(1, round(total / 3.0))  # one slow-down every ~3 km

    def position(self, t: float) -> Point:
        tau = min(1.0, max(0.0, (t - self.t0) / self.duration))
        w = 2.0 * math.pi * self._k
        s = tau + self._WARP * math.sin(w * tau) / w
        d = s * self.length
        i = len(self._legs) - 1
        while i > 0 and self._cum[i] > d:
            i -= 1
        a, c, b, length = self._legs[i]
        u = 1.0 if length <= 0.0 else min(1.0, max(0.0, (d - self._cum[i]) / length))
        return _bezier(a, c, b, u)


def _bezier(a: Point, c: Point, b: Point, u: float) -> Point:
    v = 1.0 - u
    return (
        v * v * a[0] + 2.0 * v * u * c[0] + u * u * b[0],
        v * v * a[1] + 2.0 * v * u * c[1] + u * u * b[1],
    )


# --------------------------------------------------------------------------- driver


class _Driver:
    __slots__ = (
        "area",
        "driver_id",
        "heading",
        "next_ping_ms",
        "pos",
        "rng",
        "state",
        "threshold",
        "trip",
        "until",
    )

    def __init__(self, driver_id: str, rng: random.Random, t0: float, first_ping_ms: int):
        self.driver_id = driver_id
        self.rng = rng
        # the driver is online when active_fraction(hour) exceeds this: some drivers are
        # night owls (low threshold), most only come out for the rush hours
        self.threshold = rng.random()
        self.area = rng.choices(range(len(NEIGHBOURHOODS)), [n.weight for n in NEIGHBOURHOODS])[0]
        self.pos = self._spot(self.area)
        self.heading = round(rng.uniform(0.0, 359.9), 1)
        self.trip: _Trip | None = None
        self.next_ping_ms = first_ping_ms
        if self._wants_online(local_hour(t0)):
            self.state = _DWELL
            self.until = t0 + rng.uniform(0.0, 600.0)
        else:
            self.state = _OFFLINE
            self.until = t0 + rng.uniform(0.0, 900.0)

    def _spot(self, area: int) -> Point:
        cx, cy = _CENTRES[area]
        r = NEIGHBOURHOODS[area].radius_km / 2.0
        return (cx + self.rng.gauss(0.0, r), cy + self.rng.gauss(0.0, r))

    def _wants_online(self, hour: float) -> bool:
        return self.threshold + self.rng.gauss(0.0, 0.04) < active_fraction(hour)

    def advance(self, t: float) -> None:
        """Play every state change due at or before t (seconds since the epoch)."""
        rng = self.rng
        while self.until <= t:
            now = self.until
            if self.state == _DRIVING:
                assert self.trip is not None
                self.pos = self.trip.end
                self.trip = None
                self.state = _DWELL
                self.until = now + rng.uniform(120.0, 720.0)
            elif self.state == _DWELL:
                hour = local_hour(now)
                if rng.random() < _BREAK_PROBABILITY:
                    self.state = _OFFLINE
                    self.until = now + rng.uniform(900.0, 2700.0)
                elif not self._wants_online(hour):
                    self.state = _OFFLINE
                    self.until = now + rng.uniform(300.0, 900.0)
                else:
                    self.trip = self._plan_trip(now, hour)
                    self.state = _DRIVING
                    self.until = now + self.trip.duration
            elif self._wants_online(local_hour(now)):
                self.state = _DWELL
                self.until = now + rng.uniform(0.0, 240.0)
            else:
                self.until = now + rng.uniform(300.0, 900.0)

    def _plan_trip(self, now: float, hour: float) -> _Trip:
        rng = self.rng
        weights = []
        for j, n in enumerate(NEIGHBOURHOODS):
            d = _dist(self.pos, _CENTRES[j])
            if j == self.area:
                weights.append(0.25 * n.weight)  # a short hop within the neighbourhood
            elif d > _MAX_TRIP_KM:
                weights.append(0.0)
            else:
                weights.append(n.weight * _kind_boost(n, hour) * math.exp(-d / 12.0))
        dest = rng.choices(range(len(NEIGHBOURHOODS)), weights)[0]
        goal = self._spot(dest)
        points: list[Point] = [self.pos, goal]
        straight = [False]
        here, there = NEIGHBOURHOODS[self.area], NEIGHBOURHOODS[dest]
        if here.island != there.island:
            # across the lagoon: over whichever bridge makes the shortest trip
            def via(ends: tuple[Point, Point]) -> tuple[float, Point, Point]:
                first, second = ends if not here.island else (ends[1], ends[0])
                return (
                    _dist(self.pos, first) + _dist(first, second) + _dist(second, goal),
                    first,
                    second,
                )

            _, first, second = min(via(ends) for ends in _BRIDGE_ENDS)
            points = [self.pos, first, second, goal]
            straight = [False, True, False]
        cruise = min(45.0, max(15.0, rng.uniform(24.0, 45.0) * congestion(hour)))
        self.area = dest
        return _Trip(points, straight, now, cruise, rng)

    @property
    def online(self) -> bool:
        return self.state != _OFFLINE

    def ping(self, ts_ms: int) -> SimPing:
        rng = self.rng
        t = ts_ms / 1000.0
        speed = 0.0
        if self.trip is not None:
            trip = self.trip
            here = trip.position(t)
            if t + 1.0 <= trip.t0 + trip.duration:
                a, b = here, trip.position(t + 1.0)
            else:
                a, b = trip.position(t - 1.0), here
            dx, dy = b[0] - a[0], b[1] - a[1]
            moved = math.hypot(dx, dy)
            if moved > 1e-6:
                self.heading = round(math.degrees(math.atan2(dx, dy)) % 360.0, 1)
                if self.heading >= 360.0:  # -1e-9 % 360 == 360.0 and rounding can land there
                    self.heading = 0.0
            speed = max(0.0, round(moved * 3600.0 * (1.0 + rng.gauss(0.0, 0.03)), 1))
        else:
            here = self.pos
        lat, lon = _to_latlon(
            (here[0] + rng.gauss(0.0, _GPS_NOISE_KM), here[1] + rng.gauss(0.0, _GPS_NOISE_KM))
        )
        return SimPing(self.driver_id, round(lat, 6), round(lon, 6), ts_ms, speed, self.heading)


# ---------------------------------------------------------------------------- fleet


def _epoch_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: give a timezone (the rhythm is in Lagos time)")
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class Fleet:
    """``drivers`` simulated drivers, deterministic for ``seed``, whose clock starts at
    ``start`` (timezone-aware). Advance it with ``step``/``advance_to``; each returns the
    pings produced in the time it covered, ordered by (ts, driver_id)."""

    def __init__(
        self,
        drivers: int,
        seed: int,
        start: datetime,
        ping_interval: float = DEFAULT_LIVE_INTERVAL_S,
    ) -> None:
        if drivers < 1:
            raise ValueError("drivers must be >= 1")
        self._now_ms = _epoch_ms(start)
        self.ping_interval = ping_interval
        width = max(4, len(str(drivers)))
        t0 = self._now_ms / 1000.0
        self._drivers: list[_Driver] = []
        for i in range(1, drivers + 1):
            rng = random.Random(f"heatreplay-sim:{seed}:{i}")
            first_ping = self._now_ms + rng.randrange(self._interval_ms)  # stagger
            self._drivers.append(_Driver(f"drv-{i:0{width}d}", rng, t0, first_ping))

    @property
    def ping_interval(self) -> float:
        """Seconds between two pings of one online driver (changeable between steps)."""
        return self._interval_ms / 1000.0

    @ping_interval.setter
    def ping_interval(self, seconds: float) -> None:
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError("ping_interval must be a positive number of seconds")
        self._interval_ms = max(1, round(seconds * 1000.0))

    @property
    def now_ms(self) -> int:
        return self._now_ms

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self._now_ms / 1000.0, UTC)

    def __len__(self) -> int:
        return len(self._drivers)

    def online_count(self) -> int:
        return sum(1 for d in self._drivers if d.online)

    def step(self, dt: float) -> list[SimPing]:
        """Advance by ``dt`` seconds; return the pings with ts in [now, now + dt)."""
        if dt < 0:
            raise ValueError("dt must be >= 0")
        return self.advance_to(self._now_ms + round(dt * 1000.0))

    def advance_to(self, t_ms: int) -> list[SimPing]:
        """Advance to ``t_ms`` (epoch ms); return the pings with ts in [now, t_ms)."""
        if t_ms < self._now_ms:
            raise ValueError("the fleet cannot go back in time")
        interval = self._interval_ms
        out: list[SimPing] = []
        for d in self._drivers:
            due = d.next_ping_ms
            while due < t_ms:
                if d.state == _OFFLINE and d.until * 1000.0 > due:
                    # nothing happens until the driver's next wake-up check: jump to the
                    # first ping slot at or after it (identical result, far less work)
                    wake = min(d.until * 1000.0, float(t_ms))
                    due += max(1, math.ceil((wake - due) / interval)) * interval
                    continue
                d.advance(due / 1000.0)
                if d.online:
                    out.append(d.ping(due))
                due += interval
            d.next_ping_ms = due
        self._now_ms = t_ms
        out.sort(key=lambda p: (p.ts, p.driver_id))
        return out

    def skip_to(self, t_ms: int) -> None:
        """Advance to ``t_ms`` without producing pings (catching up with the wall clock)."""
        if t_ms < self._now_ms:
            raise ValueError("the fleet cannot go back in time")
        interval = self._interval_ms
        for d in self._drivers:
            d.advance(t_ms / 1000.0)
            if d.next_ping_ms < t_ms:
                d.next_ping_ms += math.ceil((t_ms - d.next_ping_ms) / interval) * interval
        self._now_ms = t_ms


def iter_backfill(
    fleet: Fleet,
    start: datetime,
    end: datetime,
    interval_s: float = DEFAULT_BACKFILL_INTERVAL_S,
    *,
    max_batch: int = MAX_BATCH,
    chunk_s: float = 60.0,
) -> Iterator[list[SimPing]]:
    """Yield the fleet's pings for [start, end) as batches, without sleeping.

    Each online driver pings every ``interval_s`` simulated seconds. Batches hold exactly
    ``max_batch`` pings except the last, and the stream is ordered by ts (so per driver
    too). The fleet is moved silently to ``start`` if it is behind it, and is left at
    ``end``, ready to go on live.
    """
    start_ms, end_ms = _epoch_ms(start), _epoch_ms(end)
    if end_ms <= start_ms:
        raise ValueError("backfill window is empty: end must be after start")
    if fleet.now_ms > start_ms:
        raise ValueError("the fleet is already past the start of the backfill window")
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    fleet.skip_to(start_ms)
    fleet.ping_interval = interval_s
    chunk_ms = max(1, round(chunk_s * 1000.0))
    buffer: list[SimPing] = []
    t = start_ms
    while t < end_ms:
        t = min(end_ms, t + chunk_ms)
        buffer.extend(fleet.advance_to(t))
        while len(buffer) >= max_batch:
            yield buffer[:max_batch]
            del buffer[:max_batch]
    if buffer:
        yield buffer


# ------------------------------------------------------------------------- posting


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(_MAX_RETRY_WAIT_S, max(0.0, seconds))


def _backoff_s(attempt: int) -> float:
    # 0.5, 1, 2, 4, ... capped, with jitter so a restarted server is not hit in lockstep
    return min(20.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


def _reason(resp: requests.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason or "", f" ({resp.text[:200]!r})" if resp.text else ""
    if not isinstance(body, dict):
        return resp.reason or "", f" ({str(body)[:200]})"
    error = str(body.get("error", resp.reason or ""))
    extra = body.get("details", body.get("message"))
    if isinstance(extra, list):
        shown = "; ".join(
            f"#{d.get('index')} {d.get('field')}: {d.get('message')}"
            if isinstance(d, dict)
            else str(d)
            for d in extra[:3]
        )
        more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
        return error, f": {shown}{more}"
    return error, f": {extra}" if extra else ""


def _post_one(
    session: requests.Session,
    url: str,
    headers: dict[str, str],
    body: bytes,
    count: int,
    max_attempts: int,
    timeout_s: float,
    sleep: Callable[[float], None],
) -> None:
    last = ""
    for attempt in range(1, max_attempts + 1):
        try:
            resp = session.post(url, data=body, headers=headers, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            # at-least-once: a timed-out request may have been accepted; a duplicate
            # ping does not change a heat value (distinct drivers), a lost one would
            last = f"{type(exc).__name__}: {exc}"
            wait = _backoff_s(attempt)
        else:
            status = resp.status_code
            if 200 <= status < 300:
                return
            if status not in _RETRY_STATUSES:
                error, detail = _reason(resp)
                raise IngestRejected(url, status, error, detail)
            error, detail = _reason(resp)
            last = f"HTTP {status} {error}{detail}"
            hinted = _retry_after_s(resp.headers.get("Retry-After"))
            wait = hinted if hinted is not None else _backoff_s(attempt)
        if attempt < max_attempts:
            sleep(wait)
    raise IngestUnavailable(
        f"{url} did not take a batch of {count} pings after {max_attempts} attempts "
        f"(last: {last}); is the server up and is Kafka reachable?"
    )


def post_batches(
    url: str,
    token: str,
    batches: Iterable[Sequence[SimPing]],
    progress: Callable[[int, Sequence[SimPing]], None] | None = None,
    *,
    session: requests.Session | None = None,
    max_batch: int = MAX_BATCH,
    max_attempts: int = 8,
    timeout_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """POST each batch (split to at most ``max_batch`` pings) as a JSON array to ``url``.

    Uses one keep-alive session. 503/429/502/504 and connection errors are retried with
    exponential backoff (honouring ``Retry-After``) up to ``max_attempts`` tries, then
    ``IngestUnavailable`` is raised; any other error status raises ``IngestRejected``
    carrying the server's JSON ``error`` and details. After every accepted request
    ``progress(pings_sent_so_far, request_pings)`` is called. Returns the pings sent.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    own = session is None
    http = requests.Session() if session is None else session
    sent = 0
    try:
        for batch in batches:
            for i in range(0, len(batch), max_batch):
                chunk = batch[i : i + max_batch]
                body = msgspec.json.encode(chunk)
                _post_one(http, url, headers, body, len(chunk), max_attempts, timeout_s, sleep)
                sent += len(chunk)
                if progress is not None:
                    progress(sent, chunk)
    finally:
        if own:
            http.close()
    return sent


# ------------------------------------------------------------------------ progress


class _StatusLine:
    """One status line on a stream: redrawn in place on a terminal, otherwise a plain
    line at most every ``plain_every_s`` so logs stay readable."""

    def __init__(self, stream: TextIO, plain_every_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = 0.1 if self.tty else plain_every_s
        self.last = -math.inf
        self.width = 0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
        self.width = 0


def _lagos_time(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000.0, LAGOS_TZ).strftime("%Y-%m-%d %H:%M WAT")


class BackfillProgress:
    """Progress bar for a backfill of [start_ms, end_ms): percentage of simulated time,
    simulated time reached, pings sent, pings/s. Pass it to ``post_batches``."""

    def __init__(self, start_ms: int, end_ms: int, stream: TextIO, bar_width: int = 30) -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.line = _StatusLine(stream)
        self.bar_width = bar_width
        self.began = time.monotonic()
        self.sent = 0
        self.reached_ms = start_ms

    def __call__(self, sent: int, batch: Sequence[SimPing]) -> None:
        self.sent = sent
        if batch:
            self.reached_ms = max(self.reached_ms, batch[-1].ts + 1)
        self.line.show(self.render())

    def render(self) -> str:
        span = max(1, self.end_ms - self.start_ms)
        frac = min(1.0, max(0.0, (self.reached_ms - self.start_ms) / span))
        filled = round(frac * self.bar_width)
        bar = "#" * filled + "-" * (self.bar_width - filled)
        elapsed = max(1e-9, time.monotonic() - self.began)
        return (
            f"backfill [{bar}] {frac * 100:5.1f}%  sim {_lagos_time(self.reached_ms)}  "
            f"{self.sent:,} pings  {self.sent / elapsed:,.0f} pings/s"
        )

    def finish(self, complete: bool = True) -> None:
        if complete:
            self.reached_ms = self.end_ms
        self.line.show(self.render(), force=True)
        self.line.done()


# ---------------------------------------------------------------------- entry point


def _until_stopped(
    batches: Iterable[list[SimPing]], stop_event: threading.Event | None
) -> Iterator[list[SimPing]]:
    for batch in batches:
        if stop_event is not None and stop_event.is_set():
            return
        yield batch


def run_simulate(
    base_url: str,
    token: str,
    drivers: int = DEFAULT_DRIVERS,
    seed: int = 1,
    backfill: timedelta | None = None,
    interval_s: float = DEFAULT_LIVE_INTERVAL_S,
    speedup: float = 1.0,
    duration_s: float | None = None,
    stop_event: threading.Event | None = None,
    *,
    live_after_backfill: bool = False,
    backfill_interval_s: float = DEFAULT_BACKFILL_INTERVAL_S,
    session: requests.Session | None = None,
    progress_stream: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Simulate a Lagos fleet and post its pings to ``{base_url}/api/pings``.

    Parameters:
        base_url: the service root, e.g. ``http://localhost:8000``.
        token: a JWT with role ``ingest`` (``heatreplay token --role ingest``).
        drivers: fleet size (driver ids ``drv-0001`` ...).
        seed: the same seed gives the same drivers and the same movements.
        backfill: if given, first generate and post the past window [now - backfill, now)
            as fast as the server takes it, with a progress bar; then return, unless
            ``live_after_backfill``.
        interval_s: live mode: every ``interval_s`` wall seconds post the pings of the
            time just elapsed; each online driver pings once per ``interval_s``.
        speedup: live mode: simulated time runs this many times faster than the wall
            clock (speedup 60 plays a day's rhythm in 24 minutes). Drivers still ping
            once per ``interval_s`` of wall time and every ts is real time (<= now).
        duration_s: live mode stops after this many wall seconds (None: until stopped).
        stop_event: set it (e.g. from a SIGTERM handler) to stop promptly.
        live_after_backfill: after the backfill, catch up with the clock and go on live.
        backfill_interval_s: seconds between two pings of a driver during the backfill.
        session: a ``requests.Session`` to reuse (default: a new keep-alive session).
        progress_stream: where progress goes (default stderr).
        clock: wall clock, epoch seconds (tests inject a fake one).

    Returns the number of pings the server accepted. Raises ``IngestRejected`` or
    ``IngestUnavailable`` (both ``SimulateError``) when pings cannot be delivered.
    """
    if drivers < 1:
        raise ValueError("drivers must be >= 1")
    if not interval_s > 0 or not speedup > 0:
        raise ValueError("interval_s and speedup must be > 0")
    if backfill is not None and backfill <= timedelta(0):
        raise ValueError("backfill must be a positive duration")
    url = base_url.rstrip("/") + "/api/pings"
    stream = sys.stderr if progress_stream is None else progress_stream
    own = session is None
    http = requests.Session() if session is None else session
    sent = 0
    try:
        now = datetime.fromtimestamp(clock(), UTC)
        if backfill is not None:
            fleet = Fleet(drivers, seed, now - backfill, ping_interval=backfill_interval_s)
            sent += _backfill(fleet, now, backfill_interval_s, url, token, http, stream, stop_event)
            if not live_after_backfill:
                return sent
            # posting took a while: backfill the gap too, so history has no hole
            for _ in range(3):
                behind = datetime.fromtimestamp(clock(), UTC)
                if stop_event is not None and stop_event.is_set():
                    return sent
                if (behind - fleet.now).total_seconds() < interval_s:
                    break
                sent += _backfill(
                    fleet, behind, backfill_interval_s, url, token, http, stream, stop_event
                )
        else:
            fleet = Fleet(drivers, seed, now, ping_interval=interval_s * speedup)
        sent += _live(
            fleet, url, token, http, interval_s, speedup, duration_s, stop_event, stream, clock
        )
        return sent
    finally:
        if own:
            http.close()


def _backfill(
    fleet: Fleet,
    end: datetime,
    interval_s: float,
    url: str,
    token: str,
    http: requests.Session,
    stream: TextIO,
    stop_event: threading.Event | None,
) -> int:
    start = fleet.now
    bar = BackfillProgress(fleet.now_ms, _epoch_ms(end), stream)
    batches = _until_stopped(iter_backfill(fleet, start, end, interval_s), stop_event)
    try:
        sent = post_batches(url, token, batches, bar, session=http)
    finally:
        bar.finish(complete=not (stop_event is not None and stop_event.is_set()))
    return sent


def _live(
    fleet: Fleet,
    url: str,
    token: str,
    http: requests.Session,
    interval_s: float,
    speedup: float,
    duration_s: float | None,
    stop_event: threading.Event | None,
    stream: TextIO,
    clock: Callable[[], float],
) -> int:
    stop = stop_event if stop_event is not None else threading.Event()
    line = _StatusLine(stream, plain_every_s=30.0)
    wall_anchor = clock()
    wall_anchor_ms = round(wall_anchor * 1000.0)
    if fleet.now_ms < wall_anchor_ms:
        fleet.skip_to(wall_anchor_ms)
    sim_anchor_ms = fleet.now_ms
    fleet.ping_interval = interval_s * speedup  # once per interval_s of wall time
    deadline = None if duration_s is None else wall_anchor + duration_s
    next_tick = wall_anchor + interval_s
    sent = 0
    try:
        while not stop.is_set():
            wait = next_tick - clock()
            if deadline is not None:
                wait = min(wait, deadline - clock())
            if wait > 0 and stop.wait(wait):
                break
            wall_now = clock()
            if deadline is not None:
                wall_now = min(wall_now, deadline)
            target = sim_anchor_ms + round((wall_now - wall_anchor) * 1000.0 * speedup)
            pings = fleet.advance_to(max(fleet.now_ms, target))
            if speedup != 1.0:
                # simulated instants back onto the wall clock: every ts is real and past
                pings = [
                    msgspec.structs.replace(
                        p, ts=wall_anchor_ms + math.floor((p.ts - sim_anchor_ms) / speedup)
                    )
                    for p in pings
                ]
            if pings:
                sent += post_batches(url, token, [pings], session=http)
            line.show(
                f"live  sim {_lagos_time(fleet.now_ms)}  online {fleet.online_count()}/"
                f"{len(fleet)}  {sent:,} pings sent"
            )
            if deadline is not None and wall_now >= deadline:
                break
            next_tick = max(next_tick + interval_s, clock())
    finally:
        line.done()
    return sent


if __name__ == "__main__":
    # Generator throughput: a day of the default demo fleet, as the backfill makes it.
    fleet = Fleet(DEFAULT_DRIVERS, seed=1, start=datetime(2026, 11, 20, tzinfo=LAGOS_TZ))
    began = time.perf_counter()
    total = 0
    encoded = 0
    for batch in iter_backfill(fleet, fleet.now, fleet.now + timedelta(days=1)):
        total += len(batch)
        encoded += len(msgspec.json.encode(batch))
    took = time.perf_counter() - began
    print(
        f"{total:,} pings for 24 h of {DEFAULT_DRIVERS} drivers in {took:.1f} s: "
        f"{total / took:,.0f} pings/s generated and encoded ({encoded / total:.0f} B/ping)"
    )
