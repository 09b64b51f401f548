"""The sink's binary COPY rows: the vectorised encoder writes exactly the bytes of the
row-by-row one, the vectorised geohash is python-geohash's wherever it is used, chunks it cannot
take fall back, and PostgreSQL reads the rows back as the pings they came from."""

from __future__ import annotations

import random

import geohash
import numpy as np
import psycopg
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.copy_rows import (
    COPY_SQL,
    _rows_at_once,
    encode_copy,
    encode_rows,
    encode_rows_each,
    rows_in_spatial_order,
)
from app.geohash_vec import geohash8_array, geohash8_exact, geohash8_many
from app.ping import FLOAT4_MAX, Ping

T0 = 1_790_000_000_000


def _geohashes(lat: list[float], lon: list[float]) -> list[str]:
    codes = geohash8_array(np.array(lat), np.array(lon))
    return [bytes(row).decode() for row in codes]


def test_vectorised_geohash_is_python_geohash_where_it_claims_to_be():
    rng = random.Random(3)
    lat = [rng.uniform(-90, 90) for _ in range(100_000)]
    lon = [rng.uniform(-180, 180) for _ in range(100_000)]
    # cell edges at precision 8 and finer, where rounding would show first
    for _ in range(2_000):
        lat.append(-90 + rng.randrange(1 << 20) * 180 / (1 << 20))
        lon.append(-180 + rng.randrange(1 << 20) * 360 / (1 << 20))
        lat.append(-90 + rng.randrange(1 << 26) * 180 / (1 << 26))
        lon.append(-180 + rng.randrange(1 << 26) * 360 / (1 << 26))
    exact = geohash8_exact(np.array(lat), np.array(lon))
    assert exact.mean() > 0.99
    got = _geohashes(lat, lon)
    wrong = [
        (la, lo)
        for la, lo, g, ok in zip(lat, lon, got, exact, strict=True)
        if ok and g != geohash.encode(la, lo, 8)
    ]
    assert wrong == []


def test_many_at_once_equals_one_by_one_everywhere():
    rng = random.Random(4)
    lat = [rng.uniform(-1, 1) * 0.1 for _ in range(5_000)] + [90.0, -90.0, 0.0, 45.0]
    lon = [rng.uniform(-1, 1) * 0.2 for _ in range(5_000)] + [180.0, -180.0, 0.0, 0.0]
    assert geohash8_many(lat, lon) == [
        geohash.encode(a, b, 8) for a, b in zip(lat, lon, strict=True)
    ]


def test_the_rows_it_refuses_are_the_ones_it_cannot_encode():
    edges = [(0.0, 3.3), (6.4, 0.0), (1e-5, 3.3), (6.4, -1e-5), (90.0, 3.3), (6.4, 180.0)]
    exact = geohash8_exact(np.array([e[0] for e in edges]), np.array([e[1] for e in edges]))
    assert not exact.any()
    assert geohash8_exact(np.array([0.05, -89.99]), np.array([0.1, 179.99])).all()


_id = st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True)
_lat = st.one_of(st.floats(-90, 90, exclude_max=True), st.sampled_from([0.0, -0.0, 1e-9, 45.0]))
_lon = st.one_of(st.floats(-180, 180, exclude_max=True), st.sampled_from([0.0, 1e-9, -90.0]))
_value = st.one_of(st.floats(0, FLOAT4_MAX), st.sampled_from([0.0, 359.5, FLOAT4_MAX]))


@hsettings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_id, _lat, _lon, st.integers(0, 253_402_300_799_999), _value, _value),
        max_size=40,
    ),
    st.booleans(),
    st.booleans(),
)
def test_both_encoders_write_the_same_bytes(rows, same_width, drop_some):
    """Whichever way a chunk goes, the stream is the row-by-row encoder's, byte for byte;
    uniform chunks (one id width, every value present, away from the zero lines) take the
    vectorised way."""
    pings = [
        Ping(
            d.ljust(12, "x") if same_width else d,
            lat,
            lon,
            ts,
            None if drop_some and i % 3 == 0 else speed,
            None if drop_some and i % 4 == 1 else min(heading, 359.9),
        )
        for i, (d, lat, lon, ts, speed, heading) in enumerate(rows)
    ]
    assert encode_rows(pings) == encode_rows_each(pings)
    uniform = same_width and all(
        p.speed_kmh is not None
        and p.heading is not None
        and abs(p.lat) / 90 >= 2**-11
        and abs(p.lon) / 180 >= 2**-11
        for p in pings
    )
    if uniform:
        assert _rows_at_once(pings) == encode_rows_each(pings)


def test_a_mixed_chunk_falls_back_and_a_uniform_one_does_not():
    uniform = [Ping(f"drv-{i:04d}", 6.4 + i * 1e-4, 3.3, T0 + i, 30.0, 90.0) for i in range(50)]
    assert _rows_at_once(uniform) is not None
    assert _rows_at_once([*uniform, Ping("drv-1", 6.4, 3.3, T0)]) is None  # another width
    assert _rows_at_once([*uniform, Ping("drv-0051", 6.4, 3.3, T0, None, 1.0)]) is None
    assert _rows_at_once([*uniform, Ping("drv-0051", 0.0, 3.3, T0, 1.0, 1.0)]) is None
    assert _rows_at_once([]) == b""


def test_postgis_reads_the_vectorised_rows_back(database_url):
    rng = random.Random(5)
    pings = [
        Ping(
            f"rt-{i:05d}",
            round(6.4 + rng.random() * 0.3, 6),
            round(3.2 + rng.random() * 0.4, 6),
            T0 + i * 37,
            round(rng.random() * 120, 1),
            round(rng.random() * 359, 1),
        )
        for i in range(3_000)
    ]
    assert _rows_at_once(pings) is not None
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT heatreplay_ensure_day_partition(to_timestamp(%s / 1000.0)::date)", (T0,)
        )
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(encode_copy(pings))
        rows = conn.execute(
            "SELECT driver_id, (extract(epoch FROM ts) * 1000)::bigint, ST_Y(geom), ST_X(geom),"
            " ST_SRID(geom), geohash, speed_kmh, heading FROM pings"
            " WHERE driver_id LIKE 'rt-%%' ORDER BY driver_id"
        ).fetchall()
        conn.rollback()
    assert len(rows) == len(pings)
    for p, (d, ts, lat, lon, srid, gh, speed, heading) in zip(pings, rows, strict=True):
        assert (d, ts, lat, lon, srid) == (p.driver_id, p.ts, p.lat, p.lon, 4326)
        assert gh == geohash.encode(p.lat, p.lon, 8)
        assert abs(speed - p.speed_kmh) < 1e-4 and abs(heading - p.heading) < 1e-4


def test_spatial_order_holds_the_same_rows_sorted_along_the_geohash():
    """The sink's batch rows, reordered as whole rows: the same rows (as the row-by-row
    encoder writes them), sorted by their geohash, equal cells in arrival order."""
    rng = random.Random(9)

    def away_from_zero(limit: float) -> float:  # where the vectorised geohash is exact
        return rng.choice((-1, 1)) * rng.uniform(1, limit)

    pings = [
        Ping(f"s-{i:04d}", away_from_zero(80), away_from_zero(170), T0 + i, 1.0, 2.0)
        for i in range(2_000)
    ]
    pings += [Ping("twin-a", 6.5, 3.3, T0, 1.0, 2.0), Ping("twin-b", 6.5, 3.3, T0, 1.0, 2.0)]
    data = rows_in_spatial_order(pings)
    assert data is not None and len(data) == len(encode_rows_each(pings))
    size = len(data) // len(pings)  # one id width: every row has the same size
    rows = [data[i : i + size] for i in range(0, len(data), size)]
    expected = {bytes(encode_rows_each([p])): p for p in pings}
    assert sorted(rows) == sorted(expected)  # the same rows, once each
    ordered = [expected[r] for r in rows]
    cells = [geohash.encode(p.lat, p.lon, 8) for p in ordered]
    assert cells == sorted(cells)
    assert [p.driver_id for p in ordered if p.driver_id.startswith("twin")] == [
        "twin-a",
        "twin-b",
    ]
    assert rows_in_spatial_order([*pings, Ping("other-width", 6.5, 3.3, T0, 1.0, 2.0)]) is None
