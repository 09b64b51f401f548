"""replay.heat's pre-encoded frames (``cover``, ``FrameParts``, ``MarkerParts``,
``encode_frame``), which the live hub sends to scattered views, must give byte for byte
the frame of the plain path: ``build_frame`` + ``markers_wanted`` + ``attach_markers``,
serialised — whatever the precision, box (cell and bucket edges, poles, antimeridian,
the whole world) and the markers' cap."""

from __future__ import annotations

import itertools

import geohash
import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from replay.heat import (
    BBox,
    FrameParts,
    MarkerParts,
    View,
    attach_markers,
    build_frame,
    cell_bounds,
    cover,
    encode_frame,
    markers_wanted,
)

lat = st.floats(-89.99, 89.99, allow_nan=False)
lon = st.floats(-179.99, 179.99, allow_nan=False)
T = 1_763_700_000_123


def plain(counts, view, candidates, cap, min_precision=1) -> str:
    frame = build_frame(counts, view, T, "live")
    if markers_wanted(view, frame, min_precision, cap):
        attach_markers(frame, candidates)
    return msgspec.json.encode(frame).decode()


def fast(counts, view, candidates, cap, min_precision=1, eager=False) -> str:
    prefixes = cover(view.bbox, view.precision)
    if prefixes is None:  # too big a box for its precision: the hub builds it plainly
        event("cover over its limit")
        return plain(counts, view, candidates, cap, min_precision)
    parts = FrameParts(counts, view.precision, keep_cells=True, eager=eager)
    cells_json, total, peak, kept = parts.view(prefixes)
    markers = None
    if view.precision >= min_precision and 0 < total <= cap:
        cells = [c for group in kept for c in group]
        markers = MarkerParts(candidates).json_for(cells, view.precision)
    return encode_frame("live", T, view.precision, cells_json, total, peak, view.bbox, markers)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[int, dict[str, int], list, tuple[float, float]]:
    """Cells clustered like a fleet in one city plus a few anywhere, and one marker
    candidate per driver counted (several drivers per cell)."""
    precision = draw(st.integers(1, 8))
    centre = (draw(lat), draw(lon))
    spread = draw(st.sampled_from([0.001, 0.02, 0.3, 3.0]))
    offsets = st.floats(-spread, spread, allow_nan=False)
    points = draw(st.lists(st.tuples(offsets, offsets), max_size=80))
    anywhere = draw(st.lists(st.tuples(lat, lon), max_size=5))
    counts: dict[str, int] = {}
    candidates = []
    for i, (la, lo) in enumerate([(centre[0] + a, centre[1] + b) for a, b in points] + anywhere):
        la, lo = max(-89.99, min(89.99, la)), max(-179.99, min(179.99, lo))
        cell8 = geohash.encode(la, lo, 8)
        heading = draw(st.one_of(st.none(), st.floats(0, 359.9, allow_nan=False)))
        candidates.append(
            (f"d{draw(st.integers(0, 10**6))}-{i}", cell8, round(la, 6), round(lo, 6), heading)
        )
        counts[cell8[:precision]] = counts.get(cell8[:precision], 0) + 1
    if len(candidates) > 2 and draw(st.booleans()):
        # one driver twice (LiveCounts never returns that; attach_markers still sorts it)
        i, j = draw(st.lists(st.integers(0, len(candidates) - 1), min_size=2, max_size=2))
        candidates[j] = (candidates[i][0], *candidates[j][1:4], 1.0 + j)
        candidates[i] = (*candidates[i][:4], 1.0 + i)
    # zero and negative counts are not shown
    for cell in draw(st.lists(st.sampled_from(sorted(counts) or ["s"]), max_size=3)):
        if len(cell) == precision:
            counts[cell] = draw(st.integers(-1, 0))
    return precision, counts, candidates, centre


@st.composite
def views(draw: st.DrawFn, precision: int, counts: dict[str, int], centre) -> View:
    kind = draw(st.sampled_from(["near", "anywhere", "cell-edge", "bucket-edge", "world", "tiny"]))
    if kind == "world":
        return View(precision, None)
    if kind in {"cell-edge", "bucket-edge"} and counts:
        cell = draw(st.sampled_from(sorted(counts)))
        if kind == "bucket-edge":
            cell = cell[: max(1, len(cell) - draw(st.integers(1, 3)))]
        w, s, e, n = cell_bounds(cell)
        # boxes starting or ending exactly on the cell's / bucket's edges
        xs = draw(st.lists(st.sampled_from([w, e, (w + e) / 2]), min_size=2, max_size=2))
        ys = draw(st.lists(st.sampled_from([s, n, (s + n) / 2]), min_size=2, max_size=2))
        if draw(st.booleans()):
            xs[1] = min(180.0, max(-180.0, xs[1] + draw(st.floats(-0.2, 0.2))))
        xs.sort()
        ys.sort()
        return View(precision, BBox(xs[0], ys[0], xs[1], ys[1]))
    if kind == "anywhere" and precision <= 4:
        w, e = sorted((draw(lon), draw(lon)))
        s, n = sorted((draw(lat), draw(lat)))
        return View(precision, BBox(w, s, e, n))
    # a box around counted cells, from a few cells to a city
    la, lo = centre
    if counts:
        la, lo = geohash.decode(draw(st.sampled_from(sorted(counts))))
    size = 0.0005 if kind == "tiny" else draw(st.sampled_from([0.003, 0.02, 0.1, 0.5, 2.0]))
    w = max(-180.0, lo - size * draw(st.floats(0, 1)))
    s = max(-90.0, la - size / 2 * draw(st.floats(0, 1)))
    return View(precision, BBox(w, s, min(180.0, w + size), min(90.0, s + size / 2)))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_pre_encoded_frames_are_the_plain_frames_byte_for_byte(data):
    precision, counts, candidates, centre = data.draw(fleets())
    view = data.draw(views(precision, counts, centre))
    cap = data.draw(st.sampled_from([0, 1, 3, 40, 500]))
    min_precision = data.draw(st.integers(1, precision + 1))
    expected = plain(counts, view, candidates, cap, min_precision)
    total = msgspec.json.decode(expected)["total"]
    event("empty" if not total else "with markers" if '"markers"' in expected else "no markers")
    event(f"precision {precision}")
    eager = data.draw(st.booleans())  # parts built up front or per prefix asked for
    event("eager parts" if eager else "lazy parts")
    assert fast(counts, view, candidates, cap, min_precision, eager) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.data())
def test_cover_is_exactly_the_cells_the_box_touches(precision, data):
    """Every cell at the precision around the box, brute force: under a cover prefix
    if and only if build_frame's test keeps it; prefixes sorted and disjoint."""
    la, lo = data.draw(st.floats(-80, 80)), data.draw(st.floats(-170, 170))
    size = 4.0 * 0.5 ** (2.5 * precision) * data.draw(st.floats(0.5, 12))
    if data.draw(st.booleans()):  # snap the corner to a cell corner
        lo, la = cell_bounds(geohash.encode(la, lo, precision))[:2]
    box = BBox(lo, la, min(180.0, lo + size), min(90.0, la + size / 2))
    prefixes = cover(box, precision)
    assert prefixes is not None
    assert list(prefixes) == sorted(set(prefixes))
    for a, b in itertools.pairwise(prefixes):
        assert not b.startswith(a)
    # every cell within one cell of the box, walking half a cell at a time
    w, s, e, n = cell_bounds(geohash.encode(la, lo, precision))
    dlon, dlat = e - w, n - s
    around = set()
    y = box.south - dlat
    while y <= box.north + dlat:
        x = box.west - dlon
        while x <= box.east + dlon:
            around.add(
                geohash.encode(
                    max(-89.999, min(89.999, y)), max(-179.999, min(179.999, x)), precision
                )
            )
            x += dlon / 2
        y += dlat / 2
    for cell in around:
        kept = box.intersects(*cell_bounds(cell))
        assert kept == any(cell.startswith(p) for p in prefixes), cell
    # and nothing under the cover lies outside the box
    for p in prefixes:
        assert box.intersects(*cell_bounds(p))


def test_cover_gives_up_beyond_its_limit_and_the_world_is_one_prefix():
    assert cover(None, 8) == ("",)
    assert cover(BBox(-180, -90, 180, 90), 5) == ("",)
    assert cover(BBox(3.0, 6.0, 4.0, 7.0), 8, limit=1000) is None
    assert cover(BBox(3.0, 6.0, 4.0, 7.0), 5, limit=1000) is not None


def test_frame_parts_refuse_cells_of_another_precision():
    with pytest.raises(ValueError):
        FrameParts({"s14": 1, "s1": 2}, 3)


def test_markers_keep_attach_markers_order_even_for_a_driver_listed_twice():
    cell8 = geohash.encode(6.5095, 3.3711, 8)
    candidates = [
        ("b", cell8, 6.5095, 3.3711, None),
        ("a", cell8, 6.6, 3.4, 10.0),
        ("a", cell8, 6.5, 3.4, 20.0),
        ("c", geohash.encode(6.6018, 3.3515, 8), 6.6018, 3.3515, 1.5),
    ]
    frame = {"precision": 7, "cells": [[cell8[:7], 3]]}
    expected = msgspec.json.encode(attach_markers(frame, candidates)["markers"]).decode()
    assert f"[{MarkerParts(candidates).json_for([cell8[:7]], 7)}]" == expected
    assert expected.startswith('[["a",6.5,3.4,20.0],["a",6.6,3.4,10.0],["b"')
