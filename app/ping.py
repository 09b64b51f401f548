"""The ping: parsing request bodies into validated pings, and the Kafka wire form.

The fast path decodes a whole body with msgspec straight into typed structs. Only when
that fails do we walk the items one by one to say exactly which item and field is wrong
(SPEC: all or nothing, 422 with per-item details).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import geohash
import msgspec

try:  # the C extension python-geohash ships; the pure-Python wrapper is the fallback
    from _geohash import encode as _c_encode  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    _c_encode = lambda lat, lon: geohash.encode(lat, lon, 12)  # noqa: E731

# driver_id: 1-64 of A-Z a-z 0-9 . _ : - (SPEC; the analytics parameters use it too).
# A request's ids are checked at once by ``bad_driver_ids`` (one regex pass over the
# joined ids) rather than by msgspec per ping: parse + finalize 4.26 -> 2.65 ms per 5,000
# pings (docs/performance.md, sixth round).
_DRIVER_ID = r"[A-Za-z0-9._:-]{1,64}"
DRIVER_ID = re.compile(_DRIVER_ID)
_ALL_IDS = re.compile(rf"{_DRIVER_ID}(?:\n{_DRIVER_ID})*")
DRIVER_ID_MESSAGE = f"Expected `str` matching regex '^{_DRIVER_ID}$'"
Lat = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
Lon = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
# speed and heading are stored as PostgreSQL real: a larger speed cannot be stored (the
# sink's encoder raised on it and stopped, the batch unwritable, until this bound)
FLOAT4_MAX = 3.4028234663852886e38
Speed = Annotated[float, msgspec.Meta(ge=0.0, le=FLOAT4_MAX)]
Heading = Annotated[float, msgspec.Meta(ge=0.0, lt=360.0)]
# epoch milliseconds; the upper bound keeps datetime conversion in range (year 9999)
EpochMs = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PingIn(msgspec.Struct, forbid_unknown_fields=True):
    """A ping as a client sends it (SPEC "The ping")."""

    driver_id: str  # checked by bad_driver_ids
    lat: Lat
    lon: Lon
    ts: AwareTime | EpochMs | None = None
    speed_kmh: Speed | None = None
    heading: Heading | None = None


class Ping(msgspec.Struct, omit_defaults=True):
    """The validated ping as it travels through Kafka: ts always present, epoch ms.

    Decoding it checks the ranges again (a message need not come from our API), so a
    value no consumer could store or count is dead-lettered rather than stopping the
    consumer on every retry; the consumers check ``driver_id`` in bulk
    (``bad_driver_ids``)."""

    driver_id: str
    lat: Lat
    lon: Lon
    ts: EpochMs
    speed_kmh: Speed | None = None
    heading: Heading | None = None


class PingBatch(msgspec.Struct, forbid_unknown_fields=True):
    pings: list[PingIn]


@dataclass(frozen=True)
class Problem:
    index: int
    field: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BodyError(Exception):
    """The body is not JSON/NDJSON at all (HTTP 400)."""


class TooManyPings(Exception):
    """More pings than a request may carry (HTTP 413)."""


class InvalidPings(Exception):
    """One or more pings break the rules; nothing of the request is accepted (HTTP 422)."""

    def __init__(self, problems: list[Problem], total: int = 0):
        super().__init__(f"{len(problems)} invalid ping(s)")
        self.problems = problems
        self.total = total  # pings in the request, all refused with it (0: not known)


_list_decoder = msgspec.json.Decoder(list[PingIn])
_one_decoder = msgspec.json.Decoder(PingIn)
_batch_decoder = msgspec.json.Decoder(PingBatch)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
wire_decoder = msgspec.json.Decoder(Ping)

_AT_PATH = re.compile(r" - at `\$(?:\[\d+\])?(?:\.pings\[\d+\])?\.?([A-Za-z_0-9]*)")
_NAMED = re.compile(r"field `([^`]+)`")


def to_epoch_ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    return value


def _field_of(message: str) -> str:
    named = _NAMED.search(message)
    if named:
        return named.group(1)
    at = _AT_PATH.search(message)
    return at.group(1) if at and at.group(1) else "$"


def _clean(message: str) -> str:
    return message.split(" - at `", 1)[0]


def parse_body(body: bytes, ndjson: bool, max_pings: int) -> list[PingIn]:
    """Decode any SPEC body form into PingIn structs, or raise BodyError/TooManyPings/
    InvalidPings. Range rules are checked here; time rules in ``finalize``."""
    if ndjson:
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > max_pings:
            raise TooManyPings(len(lines))
        try:
            pings = _list_decoder.decode(b"[" + b",".join(lines) + b"]")
            if len(pings) == len(lines):
                return pings
            # a line held several values ("{...},{...}"): not NDJSON, and each would
            # have slipped past the count above; the per-line pass names the line
        except (msgspec.DecodeError, RecursionError):
            pass
        items: list[Any] = []
        for number, line in enumerate(lines, 1):
            try:
                items.append(_any_decoder.decode(line))
            except (msgspec.DecodeError, RecursionError) as exc:
                raise BodyError(f"line {number}: {_decode_reason(exc)}") from None
        return _validate_items(items)
    stripped = body.lstrip()
    try:
        if stripped.startswith(b"["):
            pings = _list_decoder.decode(body)
        elif b'"pings"' in stripped[:4096] and stripped.startswith(b"{"):
            pings = _batch_decoder.decode(body).pings
        else:
            pings = [_one_decoder.decode(body)]
    except msgspec.ValidationError:
        pings = _validate_items(_extract_items(body))
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BodyError(_decode_reason(exc)) from None
    if len(pings) > max_pings:
        raise TooManyPings(len(pings))
    return pings


def _decode_reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):  # msgspec's guard against deep nesting
        return "JSON nested too deeply"
    return str(exc)


def _extract_items(body: bytes) -> list[Any]:
    try:
        doc = _any_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BodyError(_decode_reason(exc)) from None
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and "pings" in doc:
        extra = sorted(set(doc) - {"pings"})
        if extra:
            raise InvalidPings([Problem(-1, extra[0], "unknown field in the envelope")])
        if not isinstance(doc["pings"], list):
            raise InvalidPings([Problem(-1, "pings", "must be an array of pings")])
        return list(doc["pings"])
    return [doc]


def _validate_items(items: list[Any]) -> list[PingIn]:
    pings: list[PingIn] = []
    problems: list[Problem] = []
    for index, item in enumerate(items):
        try:
            ping = msgspec.convert(item, PingIn)
        except msgspec.ValidationError as exc:
            message = str(exc)
            problems.append(Problem(index, _field_of(message), _clean(message)))
            continue
        pings.append(ping)
        if not DRIVER_ID.fullmatch(ping.driver_id):
            problems.append(Problem(index, "driver_id", DRIVER_ID_MESSAGE))
    if problems:
        raise InvalidPings(problems, total=len(items))
    return pings


def finalize(pings: list[PingIn], now_ms: int, future_tolerance_ms: int) -> list[Ping]:
    """Apply the time rules (missing ts = now; more than the tolerance ahead is rejected)
    and return wire pings. Raises InvalidPings listing every offending item."""
    out: list[Ping] = []
    bad_ids = bad_driver_ids(pings)
    problems = [Problem(i, "driver_id", DRIVER_ID_MESSAGE) for i in bad_ids]
    skip = set(bad_ids)  # one problem per ping, as the per-item path reports them
    limit = now_ms + future_tolerance_ms
    for index, p in enumerate(pings):
        if index in skip:
            continue
        ts = now_ms if p.ts is None else to_epoch_ms(p.ts)
        if ts < 0:  # an ISO time before 1970: the wire form (epoch ms) cannot carry it
            problems.append(Problem(index, "ts", "must be at or after 1970-01-01T00:00:00Z"))
            continue
        if ts > limit:
            problems.append(Problem(index, "ts", "more than 5 minutes in the future"))
            continue
        if not (math.isfinite(p.lat) and math.isfinite(p.lon)):
            problems.append(Problem(index, "lat", "must be finite"))
            continue
        out.append(Ping(p.driver_id, p.lat, p.lon, ts, p.speed_kmh, p.heading))
    if problems:
        raise InvalidPings(sorted(problems, key=lambda p: p.index), total=len(pings))
    return out


def bad_driver_ids(pings: Sequence[PingIn] | Sequence[Ping]) -> list[int]:
    """Indexes of the pings whose driver_id breaks the SPEC rule, in one regex pass over
    the joined ids when they are all fine (the usual case)."""
    ids = [p.driver_id for p in pings]
    joined = "\n".join(ids)
    if joined.count("\n") == len(ids) - 1 and _ALL_IDS.fullmatch(joined):
        return []
    return [i for i, d in enumerate(ids) if not DRIVER_ID.fullmatch(d)]


def encode_wire(ping: Ping) -> bytes:
    return _encoder.encode(ping)


def geohash8(lat: float, lon: float) -> str:
    """The precision-8 cell of a point, as python-geohash's ``encode(lat, lon, 8)``.
    The C encoder is called directly on the common path (3x faster than the wrapper);
    the wrapper handles the edges it adjusts (lat 90, lon 180)."""
    if -90.0 <= lat < 90.0 and -180.0 <= lon < 180.0:
        return _c_encode(lat, lon)[:8]  # type: ignore[no-any-return]
    return geohash.encode(lat, lon, 8)  # type: ignore[no-any-return]
