"""/api/analytics/*: the common questions about the history, parameters only (no SQL
from a request). Contract and error catalogue: docs/analytics.md."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Blueprint, current_app, request

from app import analytics_queries as q
from app.auth import require_role
from app.errors import InvalidParameter
from app.export import export_response
from app.geo_params import (
    Area,
    InvalidGeoJson,
    LimitExceeded,
    TimeRange,
    parse_cell_precision,
    parse_driver_id,
    parse_int,
    parse_range,
    request_area,
)
from app.services import history_connection
from app.settings import Settings
from replay.heat import cell_bounds, iso_ms

bp = Blueprint("analytics", __name__, url_prefix="/api/analytics")


@contextmanager
def snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """Several queries of one answer read one snapshot (a batch the sink commits between
    them cannot make them disagree)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


MAX_STEPS = 10_000  # points in one activity answer
MAX_TOP = 1_000
PATH_MAX_POINTS = 100_000  # a longer path is refused (422): ask for a shorter range
EXPORT_FORMATS = ("csv", "geojson")


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _polygon_source() -> Any:
    """POST: the body is the GeoJSON area; GET: the ``polygon`` query parameter."""
    if request.method != "POST":
        return request.args.get("polygon")
    if request.args.get("polygon"):
        raise InvalidParameter("POST carries the polygon in the body, not in the query")
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise InvalidGeoJson("the POST body must be a GeoJSON Polygon or MultiPolygon")
    return raw


def _range_and_area(required: bool) -> tuple[TimeRange, Area | None]:
    settings = _settings()
    rng = parse_range(request.args.get("from"), request.args.get("to"), settings)
    area = request_area(_polygon_source(), request.args.get("bbox"), settings, required)
    return rng, area


def _range_json(rng: TimeRange) -> dict[str, str]:
    return {"from": iso_ms(rng.start_ms), "to": iso_ms(rng.end_ms)}


@bp.route("/activity", methods=["GET", "POST"])
@require_role("viewer")
def get_activity() -> Any:
    rng, area = _range_and_area(required=True)
    assert area is not None
    step = parse_int(request.args.get("step"), "step", 60, 1, _settings().max_range_s)
    steps = math.ceil(rng.span_ms / (step * 1000))
    if steps > MAX_STEPS:
        raise LimitExceeded(
            f"{steps} steps of {step} s; at most {MAX_STEPS} per request: raise step",
            field="step",
            limit=MAX_STEPS,
        )
    with history_connection() as conn:
        q.check_area(conn, area, _settings())
        with snapshot(conn):  # the totals are the points' sums, whatever the sink commits
            counts = q.activity(conn, area, rng, step) if steps else {}
            pings, drivers = q.activity_totals(conn, area, rng) if steps else (0, 0)
    points = [
        [iso_ms(rng.start_ms + k * step * 1000), *counts.get(k, (0, 0))] for k in range(steps)
    ]
    return {
        **_range_json(rng),
        "step": step,
        "area": area.describe(),
        "points": points,
        "pings": pings,
        "drivers": drivers,
    }


@bp.route("/top-cells", methods=["GET", "POST"])
@require_role("viewer")
def get_top_cells() -> Any:
    rng, area = _range_and_area(required=False)
    precision = parse_cell_precision(request.args.get("precision"), 6)
    top = parse_int(request.args.get("top"), "top", 10, 1, MAX_TOP)
    with history_connection() as conn:
        if area is not None:
            q.check_area(conn, area, _settings())
        cells = q.top_cells(conn, area, rng, precision, top) if rng.span_ms else []
    return {
        **_range_json(rng),
        "precision": precision,
        "top": top,
        "area": area.describe() if area else None,
        "cells": [
            {"cell": c.cell, "pings": c.pings, "drivers": c.drivers, "bbox": cell_bounds(c.cell)}
            for c in cells
        ],
    }


@bp.get("/drivers/<driver_id>/path")
@require_role("viewer")
def get_driver_path(driver_id: str) -> Any:
    driver_id = parse_driver_id(driver_id)
    rng = parse_range(request.args.get("from"), request.args.get("to"), _settings())
    fmt = request.args.get("format") or "feature"
    if fmt not in ("feature", "collection"):
        raise InvalidParameter("format must be 'feature' or 'collection'", field="format")
    with history_connection() as conn, snapshot(conn):  # distance_m is of these points
        points, distance_m = q.driver_path(conn, driver_id, rng, PATH_MAX_POINTS)
    coords = [[p.lon, p.lat] for p in points]
    geometry: dict[str, Any] | None = None
    if len(coords) >= 2:
        geometry = {"type": "LineString", "coordinates": coords}
    elif coords:
        geometry = {"type": "Point", "coordinates": coords[0]}
    line = {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "driver_id": driver_id,
            **_range_json(rng),
            "pings": len(points),
            "first_ts": iso_ms(points[0].ts_ms) if points else None,
            "last_ts": iso_ms(points[-1].ts_ms) if points else None,
            "distance_m": distance_m,
        },
    }
    if fmt == "feature":
        return line
    features = [line] + [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
            "properties": {
                "driver_id": driver_id,
                "ts": iso_ms(p.ts_ms),
                "speed_kmh": p.speed_kmh,
                "heading": p.heading,
            },
        }
        for p in points
    ]
    return {"type": "FeatureCollection", "features": features}


@bp.route("/export", methods=["GET", "POST"])
@require_role("viewer")
def get_export() -> Any:
    fmt = request.args.get("format") or "csv"
    if fmt not in EXPORT_FORMATS:
        raise InvalidParameter("format must be 'csv' or 'geojson'", field="format")
    rng, area = _range_and_area(required=True)
    assert area is not None
    with history_connection() as conn:
        q.check_area(conn, area, _settings())
    return export_response(_settings(), fmt, area, rng)
