"""History and replay: GET /api/timeline, /api/peaks, /api/replay/frame and WS /ws/replay.

The logic lives in replay/ (history, timeline, peak_hours, playback); this module
parses and validates parameters, applies the limits and paces the socket.
"""

from __future__ import annotations

import contextlib
import math
import socket
from typing import Any

from flask import Blueprint, current_app, request
from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

from app import sock
from app.auth import require_role
from app.errors import InvalidParameter
from app.services import history_connection
from app.settings import Settings
from app.ws import WsSession, parse_message, send_json, ws_session
from replay.heat import View, ViewError, parse_time_ms, parse_view
from replay.markers import replay_frame_with_markers
from replay.peak_hours import peaks
from replay.playback import MAX_SPEED, MIN_SPEED, Clock, MonotonicClock, Playback
from replay.timeline import timeline

bp = Blueprint("replay", __name__)

MAX_TIMELINE_POINTS = 50_000
MAX_TOP = 50
MIN_STEP_S, MAX_STEP_S = 1.0, 86_400.0


def _settings() -> Settings:
    return current_app.config["SETTINGS"]  # type: ignore[no-any-return]


def _number(args: Any, name: str, default: float, low: float, high: float) -> float:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidParameter(f"{name} must be a number", field=name) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidParameter(f"{name} must be between {low:g} and {high:g}", field=name)
    return value


def _whole(args: Any, name: str, default: int, low: int, high: int) -> int:
    value = _number(args, name, default, low, high)
    if value != int(value):
        raise InvalidParameter(f"{name} must be a whole number", field=name)
    return int(value)


def parse_range(args: Any, settings: Settings) -> tuple[int, int]:
    start = parse_time_ms(args.get("from"), "from")
    end = parse_time_ms(args.get("to"), "to")
    if start >= end:
        raise InvalidParameter("from must be before to", field="from")
    if end - start > settings.max_range_s * 1000:
        raise InvalidParameter(f"the range may span at most {settings.max_range_s} s", field="to")
    return start, end


def parse_replay_view(precision: Any, bbox: Any, settings: Settings) -> View:
    view = parse_view(precision, bbox)
    if view.bbox is not None and view.bbox.area_deg2() > settings.max_bbox_area_deg2:
        raise ViewError(
            "bbox", f"bbox may cover at most {settings.max_bbox_area_deg2:g} square degrees"
        )
    return view


def frame_at(view: View, t_ms: int) -> dict[str, Any]:
    s = _settings()
    with history_connection() as conn:
        return replay_frame_with_markers(
            conn, view, t_ms, s.live_window_ms, s.markers_min_precision, s.markers_max
        )


@bp.get("/api/timeline")
@require_role("viewer")
def get_timeline() -> Any:
    start, end = parse_range(request.args, _settings())
    step = _whole(request.args, "step", 60, 60, 86_400)
    if step % 60:
        raise InvalidParameter("step must be a multiple of 60 seconds", field="step")
    if (end - start) / (step * 1000) > MAX_TIMELINE_POINTS:
        raise InvalidParameter(
            f"at most {MAX_TIMELINE_POINTS} points: use a longer step", field="step"
        )
    with history_connection() as conn:
        return timeline(conn, start, end, step)


@bp.get("/api/peaks")
@require_role("viewer")
def get_peaks() -> Any:
    start, end = parse_range(request.args, _settings())
    window = _whole(request.args, "window", 3600, 60, _settings().max_range_s)
    if window % 60:
        raise InvalidParameter("window must be a multiple of 60 seconds", field="window")
    top = _whole(request.args, "top", 3, 1, MAX_TOP)
    with history_connection() as conn:
        return peaks(conn, start, end, window, top)


@bp.get("/api/replay/frame")
@require_role("viewer")
def get_replay_frame() -> Any:
    t = parse_time_ms(request.args.get("t"), "t")
    view = parse_replay_view(request.args.get("precision"), request.args.get("bbox"), _settings())
    return frame_at(view, t)


@sock.route("/ws/replay", bp=bp)
def ws_replay(ws: Any) -> None:
    with ws_session(ws, "viewer") as session:
        if session is not None:
            _serve_replay(session)


def _error(ws: Any, error: str, message: str, **extra: Any) -> None:
    send_json(ws, {"type": "error", "error": error, "message": message, **extra})


def _state(ws: Any, pb: Playback) -> None:
    from replay.heat import iso_ms

    send_json(
        ws,
        {
            "type": "state",
            "playing": pb.playing,
            "paused": pb.paused,
            "ended": pb.ended,
            "speed": pb.speed,
            "t": iso_ms(pb.position),
        },
    )


def _serve_replay(session: WsSession) -> None:
    ws = session.ws
    settings = _settings()
    clock: Clock = current_app.config.get("REPLAY_CLOCK") or MonotonicClock()
    args = request.args
    try:
        start, end = parse_range(args, settings)
        speed = _number(args, "speed", settings.replay_default_speed, MIN_SPEED, MAX_SPEED)
        step_s = _number(args, "step", settings.replay_default_step_s, MIN_STEP_S, MAX_STEP_S)
        view = parse_replay_view(args.get("precision"), args.get("bbox"), settings)
    except (InvalidParameter, ViewError) as exc:
        field = exc.field if isinstance(exc, ViewError) else exc.extra.get("field")
        _error(ws, "invalid_parameter", str(exc), field=field)
        ws.close(reason=1008, message="invalid parameters")
        return
    _no_delay(ws)
    pb = Playback(
        start,
        end,
        round(step_s * 1000),
        speed,
        clock.now(),
        min_interval_s=1.0 / settings.replay_max_fps,
    )
    try:
        while not session.close_if_expired():
            now = clock.now()
            t = pb.due(now)
            if t is not None:
                send_json(ws, frame_at(view, t))
                # the budget runs from when the frame was due, not from when it was sent
                if pb.shown(t, now):
                    send_json(ws, {"type": "end"})
                continue
            wait = clock.max_wait(pb.wait(clock.now()))
            left = session.seconds_left()
            raw = ws.receive(timeout=left if wait is None else min(wait, left))
            if raw is None:
                continue
            if not session.allow_message():
                _error(ws, "rate_limited", "too many control messages")
                continue
            try:
                view = _control(pb, parse_message(raw), view, clock.now(), settings)
            except (ValueError, ViewError) as exc:
                _error(ws, "bad_message", str(exc))
                continue
            _state(ws, pb)
    except ConnectionClosed:
        return


def _no_delay(ws: Any) -> None:
    """A seek answers with two small writes (state, frame): with Nagle on, the second
    waits for the client's delayed ACK, ~40 ms measured. Best effort."""
    with contextlib.suppress(AttributeError, OSError):
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _control(pb: Playback, msg: dict[str, Any], view: View, now: float, settings: Settings) -> View:
    """Apply one client message to the playback; returns the (possibly new) view."""
    op = msg["op"]
    if op == "pause":
        pb.pause()
    elif op == "play":
        pb.play(now)
    elif op == "seek":
        pb.seek(parse_time_ms(msg.get("t"), "t"), now)
    elif op == "speed":
        value = msg.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("speed value must be a number")
        try:
            speed = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError("speed value out of range") from None
        pb.set_speed(speed, now)
    elif op == "view":
        view = parse_replay_view(msg.get("precision", view.precision), msg.get("bbox"), settings)
        pb.refresh()
    else:
        raise ValueError(f"unknown op {op!r} (replay accepts pause, play, seek, speed, view)")
    return view
