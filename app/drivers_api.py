"""GET /api/drivers/<driver_id>: the map's "follow a driver" panel (docs/markers.md).

Without ``t``: the driver as live shows it, from Redis (its latest ping in the live
window). With ``t``: the driver as the replay frame at t shows it, from PostGIS (its
latest ping in (t - W, t], the heat's own tie-break). Either way the answer names the
trail's time range; the line itself comes from the analytics path endpoint
(``GET /api/analytics/drivers/<id>/path``), which this module does not duplicate.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlencode

from flask import Blueprint, current_app, request

from app.auth import require_role
from app.errors import NotFound
from app.geo_params import parse_driver_id, parse_int
from app.live_counts import LiveCounts
from app.services import history_connection, services
from app.settings import Settings
from replay.heat import iso_ms, parse_time_ms
from replay.markers import DriverPosition, as_stored, driver_at

bp = Blueprint("drivers", __name__, url_prefix="/api/drivers")

TRAIL_DEFAULT_MIN = 10
TRAIL_MAX_MIN = 24 * 60


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def live_driver(live: LiveCounts, driver_id: str, now_ms: int) -> DriverPosition | None:
    """The driver's latest ping if it is still inside the live window at now_ms (a
    driver the worker has not expired yet but that has gone quiet is not on the map)."""
    state = live.driver(driver_id)
    if state is None or state.ts <= now_ms - live.settings.live_window_ms:
        return None
    return DriverPosition(
        driver_id,
        state.ts,
        state.cell8,
        state.lat,
        state.lon,
        as_stored(state.speed_kmh) if state.speed_kmh is not None else None,
        as_stored(state.heading) if state.heading is not None else None,
    )


@bp.get("/<driver_id>")
@require_role("viewer")
def get_driver(driver_id: str) -> Any:
    driver_id = parse_driver_id(driver_id)
    settings = _settings()
    minutes = parse_int(
        request.args.get("trail_minutes"), "trail_minutes", TRAIL_DEFAULT_MIN, 1, TRAIL_MAX_MIN
    )
    raw_t = request.args.get("t")
    if raw_t is None or raw_t == "":
        mode, t = "live", int(time.time() * 1000)
        # Redis unreachable: a 503, as for every route (app.errors)
        found = live_driver(services().live, driver_id, t)
    else:
        mode, t = "replay", parse_time_ms(raw_t, "t")
        with history_connection() as conn:
            found = driver_at(conn, driver_id, t, settings.live_window_ms)
    if found is None:
        raise NotFound(
            f"driver {driver_id!r} has no ping in the {settings.live_window_s:g} s before "
            f"{iso_ms(t)}: it is not on the {mode} map",
            driver_id=driver_id,
            t=iso_ms(t),
        )
    # the path endpoint's range is [from, to): +1 ms keeps the ping at t itself
    trail_from, trail_to = iso_ms(t - minutes * 60_000), iso_ms(t + 1)
    return {
        "driver_id": driver_id,
        "mode": mode,
        "t": iso_ms(t),
        "lat": round(found.lat, 6),
        "lon": round(found.lon, 6),
        "speed_kmh": found.speed_kmh,
        "heading": found.heading,
        "last_seen": iso_ms(found.ts_ms),
        "cell": found.cell8,
        "trail": {
            "minutes": minutes,
            "from": trail_from,
            "to": trail_to,
            "path": f"api/analytics/drivers/{quote(driver_id, safe='')}/path?"
            + urlencode({"from": trail_from, "to": trail_to}),
        },
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
