"""The one definition of a heat frame, shared by live and replay.

The heat value of a cell at time t is the number of distinct drivers whose most recent
ping with ts in (t - W, t] lies in that cell (SPEC). Live keeps those counts in Redis
(app.live_counts), replay computes them from PostGIS (replay.history); both hand the
per-cell counts at one precision to ``build_frame``, which applies the view (bbox) and
shapes the frame, so a view means exactly the same thing in both modes.
"""

from __future__ import annotations

import math
import re
import sys
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

import geohash
import msgspec
from _geohash import encode as _c_encode  # type: ignore[import-not-found]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_PRECISION, MAX_PRECISION = 1, 8


class ViewError(ValueError):
    """A view parameter (precision, bbox, time) is invalid; the message says which."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BBox:
    west: float
    south: float
    east: float
    north: float

    def intersects(self, w: float, s: float, e: float, n: float) -> bool:
        return not (e < self.west or w > self.east or n < self.south or s > self.north)

    def area_deg2(self) -> float:
        return (self.east - self.west) * (self.north - self.south)

    def as_list(self) -> list[float]:
        return [self.west, self.south, self.east, self.north]


@dataclass(frozen=True)
class View:
    precision: int
    bbox: BBox | None = None


def parse_precision(value: Any, default: int = 6) -> int:
    if value is None or value == "":
        return default
    try:
        precision = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ViewError("precision", "precision must be an integer 1-8") from None
    if isinstance(value, float) and value != precision:
        raise ViewError("precision", "precision must be an integer 1-8")
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ViewError("precision", "precision must be an integer 1-8")
    return precision


def parse_bbox(value: Any) -> BBox | None:
    """Accept "w,s,e,n" or [w, s, e, n]; None/"" means the whole world."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise ViewError("bbox", "bbox must be west,south,east,north")
    try:
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError, OverflowError):
        raise ViewError("bbox", "bbox values must be numbers") from None
    if not all(x == x and abs(x) != float("inf") for x in (w, s, e, n)):
        raise ViewError("bbox", "bbox values must be finite")
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise ViewError("bbox", "bbox is outside lon [-180,180] / lat [-90,90]")
    if w > e or s > n:
        raise ViewError("bbox", "bbox must have west <= east and south <= north")
    return BBox(w, s, e, n)


def parse_view(precision: Any, bbox: Any, default_precision: int = 6) -> View:
    return View(parse_precision(precision, default_precision), parse_bbox(bbox))


def parse_time_ms(value: Any, field: str = "t") -> int:
    """ISO-8601 (with offset; a bare time is taken as UTC) or epoch milliseconds, from
    1970 (no ping is older) to ``MAX_TIME_MS``."""
    if value is None or value == "":
        raise ViewError(field, f"{field} is required (ISO-8601 or epoch milliseconds)")
    if isinstance(value, bool):
        raise ViewError(field, f"{field} must be ISO-8601 or epoch milliseconds")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ViewError(field, f"{field} must be ISO-8601 or epoch milliseconds")
        return _in_range(int(value), field)
    text = str(value).strip()
    if _EPOCH_MS.fullmatch(text):
        return _in_range(int(text), field)
    text = text.replace("Z", "+00:00")
    if "T" in text and " " in text:
        # an unencoded '+' in a query string arrives as a space
        text = text.replace(" ", "+")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ViewError(field, f"{field} must be ISO-8601 or epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _in_range((dt - EPOCH) // timedelta(milliseconds=1), field)


# times a view may ask for: no ping is older than 1970 (the wire carries epoch ms >= 0),
# and the upper bound leaves room for a window or a step past it within datetime's range
MAX_TIME_MS = 253_370_764_800_000  # 9999-01-01T00:00:00Z
_EPOCH_MS = re.compile(r"-?[0-9]+")


def _in_range(ms: int, field: str) -> int:
    if not 0 <= ms <= MAX_TIME_MS:
        raise ViewError(
            field,
            f"{field} must be between 1970-01-01 and 9999-01-01 (in epoch milliseconds: "
            f"0 to {MAX_TIME_MS})",
        )
    return ms


def iso_ms(ms: int) -> str:
    """Frame time text: ISO-8601 UTC with 'Z', milliseconds only when non-zero."""
    dt = EPOCH + timedelta(milliseconds=ms)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=200_000)
def cell_bounds(cell: str) -> tuple[float, float, float, float]:
    box = geohash.bbox(cell)
    return box["w"], box["s"], box["e"], box["n"]


def build_frame(counts: Mapping[str, int], view: View, t_ms: int, mode: str) -> dict[str, Any]:
    """Frame per SPEC: every non-zero cell intersecting the view, sorted by geohash."""
    bbox = view.bbox
    cells: list[list[Any]] = []
    total = 0
    peak = 0
    for cell in sorted(counts):
        value = counts[cell]
        if value <= 0:
            continue
        if bbox is not None and not bbox.intersects(*cell_bounds(cell)):
            continue
        cells.append([cell, value])
        total += value
        if value > peak:
            peak = value
    frame: dict[str, Any] = {
        "type": "frame",
        "mode": mode,
        "t": iso_ms(t_ms),
        "precision": view.precision,
        "cells": cells,
        "total": total,
        "max": peak,
    }
    if bbox is not None:
        frame["bbox"] = bbox.as_list()
    return frame


class CellIndex:
    """One precision's counts bucketed by a coarser geohash prefix, so a view visits
    only the buckets its bbox touches instead of every cell (live fan-out builds one
    frame per view per round: without this, work = views x cells)."""

    def __init__(self, counts: Mapping[str, int], precision: int, small: int = 64):
        self.counts = counts
        self.precision = precision
        self.small = small  # below this many cells, filtering them all is cheaper
        self._levels: dict[int, dict[str, dict[str, int]]] = {}

    def _level(self, k: int) -> dict[str, dict[str, int]]:
        """Cells bucketed by their first k characters (built on first use, per round)."""
        if k not in self._levels:
            buckets: dict[str, dict[str, int]] = {}
            for cell, value in self.counts.items():
                buckets.setdefault(cell[:k], {})[cell] = value
            self._levels[k] = buckets
        return self._levels[k]

    def within(self, bbox: BBox | None) -> Mapping[str, int]:
        """Every cell that may intersect ``bbox`` (a superset; build_frame decides).
        Buckets one character coarser than the cells when the box spans few of them,
        else two: a view then reads about its own cells, not the city's. A box spanning
        more buckets than there are is matched bucket by bucket (a big box over the sea
        reads no cell of the city). Only the level used is built."""
        if bbox is None or len(self.counts) <= self.small:
            return self.counts
        eps = 1e-9  # a bucket touching the box edge holds cells touching it too
        west, east = max(-180.0, bbox.west - eps), min(180.0 - eps, bbox.east + eps)
        south, north = max(-90.0, bbox.south - eps), min(90.0 - eps, bbox.north + eps)
        for k in (self.precision - 1, self.precision - 2):
            if k < 1:
                return self.counts
            w, s, e, n = cell_bounds("s" * k)
            dlon, dlat = e - w, n - s
            cols = int((east - west) / dlon) + 2
            rows = int((north - south) / dlat) + 2
            if cols * rows <= 400:
                break
        buckets = self._level(k)
        out: dict[str, int] = {}
        if cols * rows >= len(buckets):  # fewer buckets than the box spans: test each
            for key, bucket in buckets.items():
                bw, bs, be, bn = cell_bounds(key)
                if not (be < west or bw > east or bn < south or bs > north):
                    out.update(bucket)
            return out
        seen: set[str] = set()
        for i in range(rows):
            lat = min(north, south + i * dlat)
            for j in range(cols):
                key = _encode(lat, min(east, west + j * dlon), k)
                if key not in seen:
                    seen.add(key)
                    found = buckets.get(key)
                    if found:
                        out.update(found)
        return out


def _encode(lat: float, lon: float, k: int) -> str:
    return _c_encode(lat, lon)[:k]  # type: ignore[no-any-return]


def markers_wanted(view: View, frame: Mapping[str, Any], min_precision: int, cap: int) -> bool:
    """Markers at street zoom only, and only while the view holds at most ``cap``
    drivers: beyond that the heat says more than a cloud of pins."""
    return view.precision >= min_precision and 0 < int(frame["total"]) <= cap


def attach_markers(
    frame: dict[str, Any],
    candidates: Iterable[tuple[str, str, float, float, float | None]],
) -> dict[str, Any]:
    """Add ``markers`` (SPEC extension): ``[driver_id, lat, lon, heading]`` for exactly
    the drivers the frame's cells count, sorted by driver id. A candidate is
    (driver_id, geohash-8 cell, lat, lon, heading), coordinates already rounded to 6
    decimals by its source (live stores them so; replay rounds when it reads them)."""
    precision = int(frame["precision"])
    shown = {cell for cell, _ in frame["cells"]}
    frame["markers"] = sorted(
        [driver, lat, lon, heading]
        for driver, cell8, lat, lon, heading in candidates
        if cell8[:precision] in shown
    )
    return frame


# --- pre-encoded frames: live fan-out builds one frame per view per round -----------
#
# ``build_frame`` above is the definition; what follows gives byte-for-byte the same
# frame, serialised, for many views of one counts snapshot at once. Each view's box is
# turned once (per view, not per round) into a cover: sorted, disjoint geohash
# prefixes whose cells at the view's precision are exactly the cells ``build_frame``
# keeps. Each round, one precision's cells are encoded once and joined per prefix
# (``FrameParts``), so a view's frame is a few dictionary look-ups and a string join,
# whatever its number of cells; markers likewise (``MarkerParts``).

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
WORLD = (-180.0, -90.0, 180.0, 90.0)
_json = msgspec.json.Encoder()


def _child_grid(parent: str) -> tuple[int, int, dict[tuple[int, int], str]]:
    """How a prefix's 32 children tile it: (columns, rows, (col, row) -> character).
    The same for every prefix of the same length parity (8 x 4 even, 4 x 8 odd)."""
    pw, ps, _, _ = cell_bounds(parent) if parent else WORLD
    grid: dict[tuple[int, int], str] = {}
    for char in BASE32:
        w, s, e, n = cell_bounds(parent + char)
        grid[(round((w - pw) / (e - w)), round((s - ps) / (n - s)))] = char
    cols = 1 + max(c for c, _ in grid)
    return cols, 32 // cols, grid


_GRIDS = (_child_grid(""), _child_grid("s"))  # children of even / odd length prefixes


def cover(bbox: BBox | None, precision: int, limit: int = 4096) -> tuple[str, ...] | None:
    """The view as geohash prefixes: sorted, disjoint, each either wholly inside
    ``bbox`` or one cell at ``precision`` that touches it; so the non-zero cells under
    them are exactly the cells ``build_frame`` keeps for the view, in its order. None
    when that takes more than ``limit`` prefixes (a huge box at a fine precision).
    Costs about its own length; cell edges are exact binary fractions of a degree, so
    the arithmetic here gives the same edges as ``cell_bounds``."""
    if bbox is None:
        return ("",)
    bw, bs, be, bn = bbox.west, bbox.south, bbox.east, bbox.north
    out: list[str] = []

    def visit(prefix: str, w: float, s: float, e: float, n: float) -> bool:
        cols, rows, grid = _GRIDS[len(prefix) % 2]
        cw, ch = (e - w) / cols, (n - s) / rows
        xs = [
            (c, x, x + cw, bw <= x and x + cw <= be)
            for c in range(cols)
            if (x := w + c * cw) <= be and x + cw >= bw
        ]
        ys = [
            (r, y, y + ch, bs <= y and y + ch <= bn)
            for r in range(rows)
            if (y := s + r * ch) <= bn and y + ch >= bs
        ]
        finest = len(prefix) + 1 == precision
        for c, x0, x1, x_in in xs:
            for r, y0, y1, y_in in ys:
                child = prefix + grid[(c, r)]
                if finest or (x_in and y_in):
                    out.append(sys.intern(child))
                    if len(out) > limit:
                        return False
                elif not visit(child, x0, y0, x1, y1):
                    return False
        return True

    w, s, e, n = WORLD
    if bw <= w and e <= be and bs <= s and n <= bn:
        return ("",)
    if not visit("", w, s, e, n):
        return None
    out.sort()
    return tuple(out)


# (cells as JSON without the brackets, total, max, the cells themselves)
Part = tuple[str, int, int, tuple[str, ...]]


class FrameParts:
    """One precision's non-zero cells of one snapshot, encoded on demand and once: for
    each prefix a view's cover asks for, the JSON of its cells (``["gh",n],...``,
    sorted), their total and max, and (``keep_cells``) the cells, for markers.

    Lazily (the default), only the cells under prefixes some view asks for are encoded
    (a round with one small street-zoom view over a snapshot of every driver's cell
    encodes that view's cells, not all of them); each cell and each prefix at most once.
    ``eager`` builds every prefix's part up front, level by level from the finer ones:
    cheaper when many views ask for many prefixes (1,000 scattered views ask for ~10^5),
    where a look-up per prefix costs more than the joins it would save."""

    def __init__(
        self,
        counts: Mapping[str, int],
        precision: int,
        keep_cells: bool = False,
        eager: bool = False,
    ):
        self.precision = precision
        items = sorted((cell, value) for cell, value in counts.items() if value > 0)
        if any(len(cell) != precision for cell, _ in items):
            raise ValueError(f"cells of precision {precision} expected")
        self._keys = [cell for cell, _ in items]
        self._values = [value for _, value in items]
        self._texts: list[str | None] = [None] * len(items)
        self._keep = keep_cells
        self._parts: dict[str, Part | None] = {}
        self._eager = eager
        if eager:
            self._build_all()

    def _build_all(self) -> None:
        keys = self._keys
        vals: list[Part] = [
            (f'["{cell}",{v}]', v, v, (cell,) * self._keep)
            for cell, v in zip(keys, self._values, strict=True)
        ]
        parts: dict[str, Part | None] = dict(zip(keys, vals, strict=True))
        # level by level, finest first: each prefix's part joins its children's
        for k in range(self.precision - 1, -1, -1):
            coarse_keys: list[str] = []
            coarse_vals: list[Part] = []
            start = 0
            for prefix, group in groupby(keys, key=itemgetter(slice(0, k))):
                end = start + sum(1 for _ in group)
                if end - start == 1:
                    part = vals[start]
                else:
                    texts, totals, peaks, kept = zip(*vals[start:end], strict=True)
                    part = (
                        ",".join(texts),
                        sum(totals),
                        max(peaks),
                        tuple(chain.from_iterable(kept)) if self._keep else (),
                    )
                coarse_keys.append(prefix)
                coarse_vals.append(part)
                start = end
            parts.update(zip(coarse_keys, coarse_vals, strict=True))
            keys, vals = coarse_keys, coarse_vals
        self._parts = parts

    def _part(self, prefix: str) -> Part | None:
        if prefix in self._parts:
            return self._parts[prefix]
        if self._eager:
            return None  # every prefix holding a cell was built
        keys = self._keys
        # the cells starting with prefix are one run of the sorted keys (geohash
        # characters all sort below "~")
        lo = bisect_left(keys, prefix)
        hi = bisect_left(keys, prefix + "~", lo)
        part: Part | None = None
        if lo < hi:
            texts, values = self._texts, self._values
            for i in range(lo, hi):
                if texts[i] is None:
                    texts[i] = f'["{keys[i]}",{values[i]}]'
            run = values[lo:hi]
            part = (
                ",".join(texts[lo:hi]),  # type: ignore[arg-type]
                sum(run),
                max(run),
                tuple(keys[lo:hi]) if self._keep else (),
            )
        self._parts[prefix] = part
        return part

    def view(self, prefixes: Iterable[str]) -> tuple[str, int, int, tuple[tuple[str, ...], ...]]:
        """(cells JSON without brackets, total, max, the cells in groups) of the view
        whose ``cover`` is ``prefixes``. (Tuples throughout: the garbage collector
        stops tracking them, so a round's many results do not trigger full
        collections of a web process holding 1,000 sockets.)"""
        get = self._parts.get if self._eager else self._part  # eager: a C-level look-up
        hits = [part for part in map(get, prefixes) if part is not None]
        if not hits:
            return "", 0, 0, ()
        texts, totals, peaks, kept = zip(*hits, strict=True)
        return ",".join(texts), sum(totals), max(peaks), kept


class MarkerParts:
    """Marker candidates of one round, each encoded once and ranked in the order
    ``attach_markers`` sorts them, grouped per cell at each precision asked for."""

    def __init__(self, candidates: Iterable[tuple[str, str, float, float, float | None]]):
        ranked = sorted(candidates, key=itemgetter(0))
        if len({c[0] for c in ranked}) < len(ranked):  # a driver twice: sort as they do
            ranked.sort(key=lambda c: [c[0], c[2], c[3], c[4]])
        encode = _json.encode
        self._texts = [encode([d, lat, lon, h]).decode() for d, _, lat, lon, h in ranked]
        self._cells8 = [c[1] for c in ranked]
        self._by_cell: dict[int, dict[str, tuple[int, ...]]] = {}

    def _ranks(self, precision: int) -> dict[str, tuple[int, ...]]:
        """Cell at ``precision`` -> the ranks of its candidates (tuples, see view)."""
        by_cell = self._by_cell.get(precision)
        if by_cell is None:
            keys = [cell8[:precision] for cell8 in self._cells8]
            order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: ranks ascend
            by_cell = {cell: tuple(ranks) for cell, ranks in groupby(order, keys.__getitem__)}
            self._by_cell[precision] = by_cell
        return by_cell

    def json_for(self, cells: Iterable[str], precision: int) -> str:
        """The markers (JSON without brackets) of the candidates in ``cells``, exactly
        as ``attach_markers`` lists them for a frame showing those cells."""
        by_cell = self._ranks(precision)
        ranks = sorted(chain.from_iterable(filter(None, map(by_cell.get, cells))))
        return ",".join(map(self._texts.__getitem__, ranks))


def encode_frame(
    mode: str,
    t_ms: int,
    precision: int,
    cells_json: str,
    total: int,
    peak: int,
    bbox: BBox | None,
    markers_json: str | None = None,
) -> str:
    """The JSON text of ``build_frame``'s frame (plus ``markers`` when given) from its
    pre-encoded parts: the same bytes as encoding the dict."""
    out = [
        '{"type":"frame","mode":',
        _json.encode(mode).decode(),
        ',"t":"',
        iso_ms(t_ms),
        '","precision":',
        str(int(precision)),
        ',"cells":[',
        cells_json,
        '],"total":',
        str(int(total)),
        ',"max":',
        str(int(peak)),
    ]
    if bbox is not None:
        out += [',"bbox":', _json.encode(bbox.as_list()).decode()]
    if markers_json is not None:
        out += [',"markers":[', markers_json, "]"]
    out.append("}")
    return "".join(out)
