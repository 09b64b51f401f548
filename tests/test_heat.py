"""replay.heat: the view filter and its index must keep exactly the cells that
intersect the view, whatever the precision and box (edges, antimeridian, poles)."""

from __future__ import annotations

import geohash
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.heat import BBox, CellIndex, View, build_frame, cell_bounds

lat = st.floats(-89.99, 89.99, allow_nan=False)
lon = st.floats(-179.99, 179.99, allow_nan=False)


@st.composite
def boxes(draw: st.DrawFn) -> BBox:
    w, e = sorted((draw(lon), draw(lon)))
    s, n = sorted((draw(lat), draw(lat)))
    return BBox(w, s, e, n)


@st.composite
def cells(draw: st.DrawFn) -> tuple[int, dict[str, int]]:
    precision = draw(st.integers(1, 8))
    # clustered like a fleet (one city) plus a few anywhere
    centre = (draw(lat), draw(lon))
    points = draw(st.lists(st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3)), max_size=60))
    anywhere = draw(st.lists(st.tuples(lat, lon), max_size=10))
    out: dict[str, int] = {}
    for dlat, dlon in points:
        la = max(-89.99, min(89.99, centre[0] + dlat))
        lo = max(-179.99, min(179.99, centre[1] + dlon))
        out[geohash.encode(la, lo, precision)] = draw(st.integers(1, 5))
    for la, lo in anywhere:
        out[geohash.encode(la, lo, precision)] = 1
    return precision, out


@settings(max_examples=300, deadline=None)
@given(cells(), boxes(), st.booleans())
def test_index_keeps_exactly_the_cells_build_frame_keeps(data, box, edge):
    precision, counts = data
    if edge and counts:
        # a box whose west edge is exactly a cell's east edge: that cell touches it
        _w, s, e, n = cell_bounds(next(iter(counts)))
        box = BBox(e, s, min(180.0, e + 0.01), n)
    view = View(precision, box)
    full = build_frame(counts, view, 0, "live")
    fast = build_frame(CellIndex(counts, precision, small=0).within(box), view, 0, "live")
    assert fast == full
    for cell, _ in full["cells"]:
        cw, cs, ce, cn = cell_bounds(cell)
        assert not (ce < box.west or cw > box.east or cn < box.south or cs > box.north)


EDGE_POINTS = [
    (89.99, 179.99),
    (89.99, -179.99),
    (-89.99, 179.99),
    (0.5, 179.99999),
    (0.5, -179.99999),
]


def test_index_keeps_the_cells_at_the_antimeridian_and_the_poles():
    """Boxes touching the antimeridian or a pole, which the strategies above do not
    draw: the index keeps what build_frame keeps, and those cells are there."""
    for box in (
        BBox(179.9, -90.0, 180.0, 90.0),
        BBox(-180.0, 89.9, -179.9, 90.0),
        BBox(180.0, 0.0, 180.0, 1.0),
        BBox(-180.0, -90.0, 180.0, 90.0),
    ):
        for precision in range(1, 9):
            counts = {geohash.encode(la, lo, precision): 1 for la, lo in [*EDGE_POINTS, (6.5, 3.4)]}
            view = View(precision, box)
            full = build_frame(counts, view, 0, "live")
            assert full["total"] > 0
            fast = build_frame(CellIndex(counts, precision, small=0).within(box), view, 0, "live")
            assert fast == full, (box, precision)
