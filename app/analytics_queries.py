"""The SQL behind /api/analytics/*: fixed statements, every request value a bind parameter.

The only composed pieces are constant fragments chosen by the code (with or without an
area filter); no text from a request ever becomes SQL. Statements run with
``prepare=False`` so each gets a custom plan: the time bounds prune day partitions and
the area is folded to a constant the day partitions' spatial indexes can use (today's
has none under GEOM_INDEX=deferred: there the time bound does the work).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from app.geo_params import Area, InvalidGeoJson, InvalidPolygon, LimitExceeded, TimeRange
from app.settings import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# the area is closed: a ping on its boundary is inside (ST_Intersects, not ST_Within)
AREA_FILTER = sql.SQL(" AND ST_Intersects(geom, ST_GeomFromGeoJSON(%(area)s))")
NO_FILTER = sql.SQL("")


def as_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def range_params(rng: TimeRange, area: Area | None) -> dict[str, Any]:
    return {
        "t0": as_datetime(rng.start_ms),
        "t1": as_datetime(rng.end_ms),
        "area": area.geojson if area else None,
    }


def area_filter(area: Area | None) -> sql.SQL:
    return AREA_FILTER if area is not None else NO_FILTER


def compose(template: LiteralString, area: Area | None) -> sql.Composed:
    return sql.SQL(template).format(area=area_filter(area))


def check_area(conn: psycopg.Connection, area: Area, settings: Settings) -> None:
    """A polygon must be valid for PostGIS, and neither it nor its extent (what a query
    over it scans: a ring around the world with a hole is small but covers everything)
    larger than MAX_BBOX_AREA_DEG2."""
    if area.bbox is not None:
        return
    try:
        row = conn.execute(
            # each polygon's extent (a MultiPolygon split at the antimeridian counts its
            # two parts, not the world between them)
            "SELECT ST_IsValid(g), ST_IsValidReason(g), greatest(ST_Area(g), "
            "(SELECT sum(ST_Area(ST_Envelope((d).geom))) FROM ST_Dump(g) AS d)) "
            "FROM (SELECT ST_GeomFromGeoJSON(%s) AS g) AS a",
            (area.geojson,),
            prepare=False,
        ).fetchone()
    except (psycopg.errors.DataError, psycopg.errors.InternalError) as exc:
        raise InvalidGeoJson(f"PostGIS cannot read the polygon: {exc}", field="polygon") from None
    assert row is not None
    valid, reason, size = row
    if not valid:
        raise InvalidPolygon(f"the polygon is not valid: {reason}", field="polygon", reason=reason)
    if size > settings.max_bbox_area_deg2:
        raise LimitExceeded(
            f"the polygon's extent covers {size:g} square degrees; at most "
            f"{settings.max_bbox_area_deg2:g} (MAX_BBOX_AREA_DEG2)",
            field="polygon",
            limit=settings.max_bbox_area_deg2,
        )


def activity(
    conn: psycopg.Connection, area: Area, rng: TimeRange, step_s: int
) -> dict[int, tuple[int, int]]:
    """Step index (0 = the step starting at ``from``) -> (pings, distinct drivers);
    steps without pings are absent."""
    query = compose(
        "SELECT floor((extract(epoch FROM ts) * 1000 - %(start_ms)s) / %(step_ms)s)::bigint"
        " AS k, count(*), count(DISTINCT driver_id)"
        " FROM pings WHERE ts >= %(t0)s AND ts < %(t1)s{area}"
        " GROUP BY k ORDER BY k",
        area,
    )
    params = range_params(rng, area) | {"start_ms": rng.start_ms, "step_ms": step_s * 1000}
    rows = conn.execute(query, params, prepare=False).fetchall()
    return {int(k): (int(n), int(d)) for k, n, d in rows}


def activity_totals(conn: psycopg.Connection, area: Area, rng: TimeRange) -> tuple[int, int]:
    query = compose(
        "SELECT count(*), count(DISTINCT driver_id) FROM pings"
        " WHERE ts >= %(t0)s AND ts < %(t1)s{area}",
        area,
    )
    row = conn.execute(query, range_params(rng, area), prepare=False).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class CellCount:
    cell: str
    pings: int
    drivers: int


def top_cells(
    conn: psycopg.Connection, area: Area | None, rng: TimeRange, precision: int, top: int
) -> list[CellCount]:
    """Busiest cells by pings (ties: by cell name) among pings in the range and area."""
    query = compose(
        "SELECT left(geohash, %(precision)s) AS cell, count(*) AS pings,"
        " count(DISTINCT driver_id) AS drivers"
        " FROM pings WHERE ts >= %(t0)s AND ts < %(t1)s{area}"
        " GROUP BY cell ORDER BY pings DESC, cell LIMIT %(top)s",
        area,
    )
    params = range_params(rng, area) | {"precision": precision, "top": top}
    return [CellCount(c, int(n), int(d)) for c, n, d in conn.execute(query, params, prepare=False)]


@dataclass(frozen=True)
class PathPoint:
    ts_ms: int
    lon: float
    lat: float
    speed_kmh: float | None
    heading: float | None


# a closed day answers this through its (driver_id, ts) index (app/driver_index.py)
PATH_POINTS_SQL: LiteralString = (
    "SELECT (extract(epoch FROM ts) * 1000)::bigint, ST_X(geom), ST_Y(geom),"
    " speed_kmh, heading FROM pings"
    " WHERE driver_id = %(driver)s AND ts >= %(t0)s AND ts < %(t1)s"
    " ORDER BY ts, geohash LIMIT %(limit)s"
)


def driver_path(
    conn: psycopg.Connection, driver_id: str, rng: TimeRange, max_points: int
) -> tuple[list[PathPoint], float]:
    """The driver's pings in time order (ties by geohash, as the tracks view) and the
    geodesic length of the line through them in metres (WGS 84 spheroid)."""
    params = range_params(rng, None) | {"driver": driver_id, "limit": max_points + 1}
    rows = conn.execute(PATH_POINTS_SQL, params, prepare=False).fetchall()
    if len(rows) > max_points:
        raise LimitExceeded(
            f"the path has more than {max_points} points; narrow the time range",
            field="to",
            limit=max_points,
        )
    points = [PathPoint(int(t), x, y, s, h) for t, x, y, s, h in rows]
    if len(points) < 2:
        return points, 0.0
    row = conn.execute(
        "SELECT ST_Length(ST_MakeLine(geom ORDER BY ts, geohash)::geography) FROM pings"
        " WHERE driver_id = %(driver)s AND ts >= %(t0)s AND ts < %(t1)s",
        params,
        prepare=False,
    ).fetchone()
    assert row is not None
    return points, float(row[0])
