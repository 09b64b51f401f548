"""Binary COPY rows for ``pings``, and the vectorised encoder the sink uses for them.

A row has six fields: ts (int64 microseconds since 2000-01-01), driver_id (text), geom
(an EWKB point, SRID 4326), geohash (8 characters), speed_kmh and heading (float4 or
NULL). The sink encodes every ping it stores, so this is a hot path.

``encode_rows`` fills a numpy record array at once when a chunk has one row layout:
every driver id the same length in bytes, speed and heading present, and coordinates
where the vectorised geohash is exact. That is what a fleet sends (one id
scheme, full pings); any other chunk takes ``encode_rows_each``, one row at a time.
Both give the same bytes (tests/test_copy_rows.py). Encoding 20k pings went 1.46 ->
0.31 us per ping (docs/performance.md, seventh round). The sink encodes a whole batch
this way, in spatial order (``rows_in_spatial_order``).

The vectorised geohash and where it is exact: app/geohash_vec.py.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from app.geohash_vec import geohash8_chars, geohash8_exact, zorder40
from app.ping import Ping, geohash8

COPY_SQL = (
    "COPY pings (ts, driver_id, geom, geohash, speed_kmh, heading) FROM STDIN (FORMAT BINARY)"
)
PG_EPOCH_MS = 946_684_800_000  # 2000-01-01 in Unix ms: PostgreSQL's timestamp epoch
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
# field count, ts (len + int64 us), then EWKB point: little-endian, type|SRID flag, srid, x, y
_ROW_START = struct.Struct("!hiq")
_EWKB_HEAD = b"\x01" + struct.pack("<II", 0x20000001, 4326)
_POINT = struct.Struct("!i").pack(25) + _EWKB_HEAD
_XY = struct.Struct("<dd")
_FLOAT4 = struct.Struct("!if")
_NULL = struct.pack("!i", -1)
_LEN = struct.Struct("!i")
_GH_LEN = _LEN.pack(8)


def encode_copy(pings: Sequence[Ping]) -> bytes:
    """The whole binary COPY stream for ``pings`` (header, rows, trailer)."""
    return HEADER + encode_rows(pings) + TRAILER


def encode_rows(pings: Sequence[Ping]) -> bytes:
    """Binary COPY rows for ``pings`` (geohash precision 8 computed here)."""
    fast = _rows_at_once(pings)
    return encode_rows_each(pings) if fast is None else fast


def rows_in_spatial_order(pings: Sequence[Ping]) -> bytes | None:
    """The rows of a uniform batch (see ``encode_rows``) sorted along the geohash's
    Z-order curve, stable for equal cells; None for any other batch. The sink COPYs a
    batch in this order: consecutive rows then descend the SP-GiST index to the same
    pages, and PostgreSQL spent ~21 % less CPU per row on a partition of 2-9M rows
    (docs/performance.md, seventh round). With GEOM_INDEX=deferred there is no such
    index to descend, but the order still pays: a box's pings sit together on the heap,
    so a query through the closed day's GiST index touched 501 pages against 1,104 in
    arrival order (twelfth round). The encoded rows are sorted, not the pings: walking Ping
    objects in an order other than their allocation's cost the encoder ~0.35 us more
    per ping in cache misses."""
    return _rows_at_once(pings, spatial=True)


def encode_rows_each(pings: Sequence[Ping]) -> bytes:
    """Row by row, any pings: a driver's encoded id is built once per call, and each row
    is five appends."""
    parts: list[bytes] = []
    append = parts.append
    pack_start = _ROW_START.pack
    pack_xy = _XY.pack
    pack_f4 = _FLOAT4.pack
    drivers: dict[str, bytes] = {}
    for p in pings:
        driver = drivers.get(p.driver_id)
        if driver is None:
            raw = p.driver_id.encode()
            driver = drivers[p.driver_id] = _LEN.pack(len(raw)) + raw + _POINT
        append(pack_start(6, 8, (p.ts - PG_EPOCH_MS) * 1000))
        append(driver)
        append(pack_xy(p.lon, p.lat))
        append(_GH_LEN + geohash8(p.lat, p.lon).encode())
        append(
            (_NULL if p.speed_kmh is None else pack_f4(4, p.speed_kmh))
            + (_NULL if p.heading is None else pack_f4(4, p.heading))
        )
    return b"".join(parts)


def _rows_at_once(pings: Sequence[Ping], spatial: bool = False) -> bytes | None:
    """The rows from one record array, or None when the chunk has more than one row
    layout (ids of different lengths, a missing speed or heading) or a coordinate the
    vectorised geohash does not cover."""
    if not pings:
        return b""
    ids = [p.driver_id.encode() for p in pings]
    width = len(ids[0])
    if any(len(i) != width for i in ids):
        return None
    speeds = [p.speed_kmh for p in pings]
    headings = [p.heading for p in pings]
    if None in speeds or None in headings:
        return None
    lat = np.array([p.lat for p in pings], dtype=np.float64)
    lon = np.array([p.lon for p in pings], dtype=np.float64)
    if not geohash8_exact(lat, lon).all():
        return None
    rows = np.empty(len(pings), dtype=_row_dtype(width))
    rows["fields"] = 6
    rows["ts_len"] = 8
    rows["ts"] = (np.array([p.ts for p in pings], dtype=np.int64) - PG_EPOCH_MS) * 1000
    rows["id_len"] = width
    rows["id"] = ids
    rows["geom_len"] = 25
    rows["ewkb"] = _EWKB_HEAD
    rows["x"] = lon
    rows["y"] = lat
    rows["gh_len"] = 8
    code = zorder40(lat, lon)
    rows["gh"] = geohash8_chars(code).view("S8").ravel()
    rows["speed_len"] = 4
    rows["speed"] = speeds
    rows["heading_len"] = 4
    rows["heading"] = headings
    if spatial:
        rows = rows[np.argsort(code, kind="stable")]
    return rows.tobytes()


def _row_dtype(width: int) -> np.dtype:
    # numpy's "S" fields pad with NUL bytes, which is exact: an id of this width fills it
    return np.dtype(
        [
            ("fields", ">i2"),
            ("ts_len", ">i4"),
            ("ts", ">i8"),
            ("id_len", ">i4"),
            ("id", f"S{width}"),
            ("geom_len", ">i4"),
            ("ewkb", "S9"),
            ("x", "<f8"),
            ("y", "<f8"),
            ("gh_len", ">i4"),
            ("gh", "S8"),
            ("speed_len", ">i4"),
            ("speed", ">f4"),
            ("heading_len", ">i4"),
            ("heading", ">f4"),
        ]
    )
