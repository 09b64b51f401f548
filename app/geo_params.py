"""Request parameters of /api/analytics/* parsed into typed values or typed errors.

Nothing here builds SQL: the values go to app.analytics_queries as bind parameters.
Rules (docs/analytics.md): time ranges are half-open [from, to); an area is a bbox or a
GeoJSON Polygon/MultiPolygon (or a Feature holding one) in lon/lat WGS 84; polygons may
touch but not cross the antimeridian and must not reach a pole; their validity is
checked by PostGIS (`ST_IsValid`, reason from `ST_IsValidReason`) in the query layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from app.errors import ApiError, InvalidParameter
from app.ping import DRIVER_ID
from app.settings import Settings
from replay.heat import BBox, ViewError, parse_bbox, parse_precision, parse_time_ms

AREA_TYPES = ("Polygon", "MultiPolygon")


class InvalidGeoJson(InvalidParameter):
    """The area is not GeoJSON we accept (syntax, type, ring structure, coordinates)."""

    status, error = 400, "invalid_geojson"


class InvalidPolygon(ApiError):
    """Well-formed GeoJSON whose polygon PostGIS finds invalid (e.g. self-intersecting)."""

    status, error = 422, "invalid_polygon"


class UnsupportedArea(ApiError):
    """An area crossing the antimeridian or reaching a pole (documented as rejected)."""

    status, error = 422, "unsupported_area"


class InvalidRange(InvalidParameter):
    status, error = 400, "invalid_range"


class LimitExceeded(ApiError):
    """A span, area, vertex count or result size over a configured limit."""

    status, error = 422, "limit_exceeded"


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int  # exclusive

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Area:
    """An area to filter pings by: ``geojson`` is handed to ST_GeomFromGeoJSON."""

    geojson: str
    kind: str  # "bbox" | "Polygon" | "MultiPolygon"
    bbox: BBox | None = None

    def describe(self) -> dict[str, Any]:
        if self.bbox is not None:
            return {"type": "bbox", "bbox": self.bbox.as_list()}
        out: dict[str, Any] = json.loads(self.geojson)
        return out


def _view(exc: ViewError) -> InvalidParameter:
    return InvalidParameter(str(exc), field=exc.field)


def parse_range(start: Any, end: Any, settings: Settings) -> TimeRange:
    """``from``/``to`` (ISO-8601 or epoch ms); ``from == to`` is a valid empty range."""
    try:
        start_ms = parse_time_ms(start, "from")
        end_ms = parse_time_ms(end, "to")
    except ViewError as exc:
        raise _view(exc) from None
    if end_ms < start_ms:
        raise InvalidRange("the range is inverted: 'to' is before 'from'", field="to")
    if end_ms - start_ms > settings.max_range_s * 1000:
        raise LimitExceeded(
            f"the range spans {(end_ms - start_ms) / 1000:g} s; at most "
            f"{settings.max_range_s} s (MAX_RANGE_S) per request",
            field="to",
            limit=settings.max_range_s,
        )
    return TimeRange(start_ms, end_ms)


def parse_int(value: Any, field: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidParameter(f"{field} must be an integer {low}-{high}", field=field)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidParameter(f"{field} must be an integer {low}-{high}", field=field) from None
    if not low <= number <= high:
        raise InvalidParameter(f"{field} must be an integer {low}-{high}", field=field)
    return number


def parse_cell_precision(value: Any, default: int = 6) -> int:
    try:
        return parse_precision(value, default)
    except ViewError as exc:
        raise _view(exc) from None


def parse_driver_id(value: str) -> str:
    if not DRIVER_ID.fullmatch(value):
        raise InvalidParameter(
            "driver_id must be 1-64 chars of A-Z a-z 0-9 . _ : -", field="driver_id"
        )
    return value


def bbox_area(value: Any, settings: Settings) -> Area | None:
    try:
        bbox = parse_bbox(value)
    except ViewError as exc:
        raise _view(exc) from None
    if bbox is None:
        return None
    if bbox.area_deg2() > settings.max_bbox_area_deg2:
        raise LimitExceeded(
            f"the bbox covers {bbox.area_deg2():g} square degrees; at most "
            f"{settings.max_bbox_area_deg2:g} (MAX_BBOX_AREA_DEG2)",
            field="bbox",
            limit=settings.max_bbox_area_deg2,
        )
    if bbox.south <= -90 or bbox.north >= 90:
        raise UnsupportedArea("the bbox reaches a pole; keep latitudes inside (-90, 90)")
    w, s, e, n = bbox.as_list()
    if w == e and s == n:  # PostGIS finds no point in a polygon collapsed to one
        raise UnsupportedArea("the bbox is a single point; give it a width or a height")
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return Area(json.dumps({"type": "Polygon", "coordinates": [ring]}), "bbox", bbox)


def polygon_area(value: Any, settings: Settings) -> Area:
    """GeoJSON text or an already decoded object -> Area (structure checked here;
    validity and area size are checked by PostGIS in analytics_queries.check_area)."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidGeoJson(f"polygon is not JSON: {exc}", field="polygon") from None
        except RecursionError:
            raise InvalidGeoJson("polygon is nested too deeply", field="polygon") from None
    if not isinstance(value, dict):
        raise InvalidGeoJson("polygon must be a GeoJSON object", field="polygon")
    if value.get("type") == "Feature":
        value = value.get("geometry")
        if not isinstance(value, dict):
            raise InvalidGeoJson("the Feature has no geometry", field="polygon")
    kind = value.get("type")
    if kind not in AREA_TYPES:
        raise InvalidGeoJson(
            f"polygon must be a GeoJSON Polygon or MultiPolygon (got {kind!r})", field="polygon"
        )
    coords = value.get("coordinates")
    polygons = [coords] if kind == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        raise InvalidGeoJson(f"{kind} needs a non-empty coordinates array", field="polygon")
    vertices = 0
    clean: list[list[list[list[float]]]] = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            raise InvalidGeoJson("each polygon is a non-empty list of rings", field="polygon")
        rings = []
        for ring in polygon:
            rings.append(_ring(ring))
            vertices += len(rings[-1])
            if vertices > settings.max_polygon_vertices:
                raise LimitExceeded(
                    f"the polygon has more than {settings.max_polygon_vertices} vertices "
                    "(MAX_POLYGON_VERTICES)",
                    field="polygon",
                    limit=settings.max_polygon_vertices,
                )
        clean.append(rings)
    body = {"type": kind, "coordinates": clean[0] if kind == "Polygon" else clean}
    return Area(json.dumps(body), kind)


def _ring(ring: Any) -> list[list[float]]:
    if not isinstance(ring, list) or len(ring) < 4:
        raise InvalidGeoJson("a linear ring needs at least 4 positions", field="polygon")
    out: list[list[float]] = []
    for pos in ring:
        if (
            not isinstance(pos, list)
            or len(pos) < 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in pos[:2])
        ):
            raise InvalidGeoJson("a position is [lon, lat] numbers", field="polygon")
        try:
            lon, lat = float(pos[0]), float(pos[1])
        except OverflowError:  # an integer of hundreds of digits
            raise InvalidGeoJson("coordinates must be finite", field="polygon") from None
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise InvalidGeoJson("coordinates must be finite", field="polygon")
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise InvalidGeoJson(
                "coordinates are outside lon [-180, 180] / lat [-90, 90] (order is [lon, lat])",
                field="polygon",
            )
        if abs(lat) == 90:
            raise UnsupportedArea(
                "the polygon reaches a pole; keep latitudes inside (-90, 90)", field="polygon"
            )
        if out and abs(lon - out[-1][0]) > 180:
            raise UnsupportedArea(
                "the polygon crosses the antimeridian; split it at ±180 into a MultiPolygon",
                field="polygon",
            )
        out.append([lon, lat])
    if out[0] != out[-1]:
        raise InvalidGeoJson("a linear ring must end where it starts", field="polygon")
    return out


def request_area(polygon: Any, bbox: Any, settings: Settings, required: bool = True) -> Area | None:
    """At most one of polygon/bbox; ``required`` makes one of them mandatory."""
    if polygon not in (None, "") and bbox not in (None, ""):
        raise InvalidParameter("give either polygon or bbox, not both", field="polygon")
    if polygon not in (None, ""):
        return polygon_area(polygon, settings)
    area = bbox_area(bbox, settings)
    if area is None and required:
        raise InvalidParameter("an area is required: polygon (GeoJSON) or bbox", field="bbox")
    return area
