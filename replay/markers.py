"""Individual drivers at time t from PostGIS: replay's markers and the driver panel.

A marker is a driver the heat counts, drawn where the heat counts it: its most recent
ping with ts in (t - W, t], ties on ts going to the larger geohash-8 (COLLATE "C") —
the ordering replay.history uses for the counts and the live Lua script uses in Redis.
Which frames carry markers and how they are shaped is decided once, in
``replay.heat.markers_wanted`` / ``attach_markers``, for live and replay alike.

Values are normalised as the live worker stores them in ``{p}:drv`` (heading and speed
as ``%g``, coordinates rounded to 6 decimals here, as live stores them), so the replay frame
at t carries the very markers the live frame at t carried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from replay.heat import View, attach_markers, markers_wanted
from replay.history import ms_to_dt, replay_frame

# Only the drivers of the cells the frame shows are read back: at most ``cap`` rows
# (markers_wanted refuses frames counting more), whatever the fleet's size.
_MARKERS_SQL = """
SELECT driver_id, geohash, ST_Y(geom), ST_X(geom), heading
FROM (
    SELECT DISTINCT ON (driver_id) driver_id, geohash, geom, heading
    FROM pings
    WHERE ts > %(low)s AND ts <= %(high)s
    ORDER BY driver_id, ts DESC, geohash COLLATE "C" DESC
) latest
WHERE left(geohash, %(precision)s) = ANY(%(cells)s)
"""

_DRIVER_SQL = """
SELECT (extract(epoch FROM ts) * 1000)::bigint, geohash, ST_Y(geom), ST_X(geom),
       speed_kmh, heading
FROM pings
WHERE driver_id = %(driver)s AND ts > %(low)s AND ts <= %(high)s
ORDER BY ts DESC, geohash COLLATE "C" DESC
LIMIT 1
"""


@dataclass(frozen=True)
class DriverPosition:
    """A driver's latest ping as the heat counts it (live or replay)."""

    driver_id: str
    ts_ms: int
    cell8: str
    lat: float
    lon: float
    speed_kmh: float | None
    heading: float | None


def as_stored(value: float | None) -> float | None:
    """Speed/heading as the live worker keeps them (``%g``, 6 significant digits); the
    history's ``real`` column comes back as its shortest text form, so any value with at
    most 6 significant digits reads the same from both."""
    return None if value is None else float(f"{value:g}")


def marker_candidates(
    conn: psycopg.Connection, t_ms: int, window_ms: int, precision: int, cells: list[str]
) -> list[tuple[str, str, float, float, float | None]]:
    if not cells:
        return []
    rows = conn.execute(
        _MARKERS_SQL,
        {
            "low": ms_to_dt(t_ms - window_ms),
            "high": ms_to_dt(t_ms),
            "precision": precision,
            "cells": cells,
        },
    ).fetchall()
    return [
        (d, gh, round(float(lat), 6), round(float(lon), 6), as_stored(h))
        for d, gh, lat, lon, h in rows
    ]


def with_replay_markers(
    conn: psycopg.Connection,
    view: View,
    frame: dict[str, Any],
    t_ms: int,
    window_ms: int,
    min_precision: int,
    cap: int,
) -> dict[str, Any]:
    """Street-zoom frames carry the drivers themselves (same policy as live)."""
    if markers_wanted(view, frame, min_precision, cap):
        cells = [cell for cell, _ in frame["cells"]]
        attach_markers(frame, marker_candidates(conn, t_ms, window_ms, view.precision, cells))
    return frame


def replay_frame_with_markers(
    conn: psycopg.Connection,
    view: View,
    t_ms: int,
    window_ms: int,
    min_precision: int,
    cap: int,
) -> dict[str, Any]:
    """The replay frame at t with its markers, both read from one snapshot, so a batch
    the sink commits between the two queries cannot make them disagree."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        frame = replay_frame(conn, view, t_ms, window_ms)
        return with_replay_markers(conn, view, frame, t_ms, window_ms, min_precision, cap)


def driver_at(
    conn: psycopg.Connection, driver_id: str, t_ms: int, window_ms: int
) -> DriverPosition | None:
    """The driver's most recent ping in (t - W, t], or None if it is not on the map."""
    row = conn.execute(
        _DRIVER_SQL,
        {"driver": driver_id, "low": ms_to_dt(t_ms - window_ms), "high": ms_to_dt(t_ms)},
    ).fetchone()
    if row is None:
        return None
    ts, cell8, lat, lon, speed, heading = row
    return DriverPosition(
        driver_id, int(ts), cell8, float(lat), float(lon), as_stored(speed), as_stored(heading)
    )
