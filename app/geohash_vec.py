"""Precision-8 geohashes of many points at once, equal to python-geohash's.

python-geohash maps x = lat / 90 (and lon / 180), in [-1, 1), to 2**63 + x * 2**63 in
64-bit fixed point, truncating the magnitude, and interleaves the top bits, longitude
first. For |x| >= 2**-11 the product x * 2**63 is an integer, so the float-to-integer
conversion here is exact and equal to its; nearer the equator or the prime meridian
(within 0.044 / 0.088 degrees), and outside its range, ``geohash8_exact`` says no and
callers use ``app.ping.geohash8`` for those points (tests/test_copy_rows.py compares the
two on random points and on cell edges).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.ping import geohash8

_BASE32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)
_SHIFTS = np.arange(35, -1, -5, dtype=np.uint64)  # 8 characters of 5 bits from 40 bits
_HALF = np.uint64(1 << 63)
_EXACT = 2.0**-11
_U = np.uint64
Floats = npt.NDArray[np.float64]


def geohash8_exact(lat: Floats, lon: Floats) -> npt.NDArray[np.bool_]:
    """Where ``geohash8_array`` equals python-geohash: inside its range, and away from
    the equator and the prime meridian (see the module docstring)."""
    la, lo = np.abs(lat / 90.0), np.abs(lon / 180.0)
    inside = (lat >= -90.0) & (lat < 90.0) & (lon >= -180.0) & (lon < 180.0)
    return inside & (la >= _EXACT) & (lo >= _EXACT)


def geohash8_array(lat: Floats, lon: Floats) -> npt.NDArray[np.uint8]:
    """Precision-8 geohashes as an (n, 8) array of ASCII codes; exact where
    ``geohash8_exact`` holds."""
    return geohash8_chars(zorder40(lat, lon))


def geohash8_chars(code: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint8]:
    """The (n, 8) ASCII codes of the precision-8 geohashes with these 40 bits."""
    return _BASE32[(code[:, None] >> _SHIFTS[None, :]) & _U(31)]


def zorder40(lat: Floats, lon: Floats) -> npt.NDArray[np.uint64]:
    """The 40 bits of the precision-8 geohash as integers: sorting by them sorts points
    along the geohash's Z-order curve, so neighbours in the order are near in space."""
    return (_spread(_fixed(lon / 180.0) >> _U(44)) << _U(1)) | _spread(_fixed(lat / 90.0) >> _U(44))


def _fixed(x: Floats) -> npt.NDArray[np.uint64]:
    magnitude = (np.abs(x) * 2.0**63).astype(np.uint64)
    return np.where(x < 0, _HALF - magnitude, _HALF + magnitude)


def _spread(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The bits of x (up to 32) moved to the even positions of a 64-bit integer."""
    x = (x | (x << _U(16))) & _U(0x0000FFFF0000FFFF)
    x = (x | (x << _U(8))) & _U(0x00FF00FF00FF00FF)
    x = (x | (x << _U(4))) & _U(0x0F0F0F0F0F0F0F0F)
    x = (x | (x << _U(2))) & _U(0x3333333333333333)
    return (x | (x << _U(1))) & _U(0x5555555555555555)


def geohash8_many(lat: Sequence[float], lon: Sequence[float]) -> list[str]:
    """``app.ping.geohash8`` of many points at once: vectorised where that is exact, one
    by one for the rest (near the zero lines, or outside the encoder's range)."""
    la = np.array(lat, dtype=np.float64)
    lo = np.array(lon, dtype=np.float64)
    cells: list[str] = geohash8_array(la, lo).view("S8").ravel().astype("U8").tolist()
    exact = geohash8_exact(la, lo)
    if not exact.all():
        for i in np.flatnonzero(~exact).tolist():
            cells[i] = geohash8(lat[i], lon[i])
    return cells
