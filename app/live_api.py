"""Live heat: GET /api/live (one frame) and WS /ws/live (a frame on connect, then a new
frame whenever the view's counts change, at most LIVE_FPS per second)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request
from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

from app import sock
from app.auth import require_role
from app.services import services
from app.settings import Settings
from app.ws import WsSession, parse_message, send_json, ws_session
from replay.heat import View, ViewError, build_frame, parse_view

bp = Blueprint("live", __name__)


def live_frame(view: View, now_ms: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    cells = services().live.cells(view.precision, now)
    return build_frame(cells, view, now, "live")


@bp.get("/api/live")
@require_role("viewer")
def get_live() -> Any:
    view = parse_view(request.args.get("precision"), request.args.get("bbox"))
    return live_frame(view)


@sock.route("/ws/live", bp=bp)
def ws_live(ws: Any) -> None:
    with ws_session(ws, "viewer") as session:
        if session is not None:
            _serve_live(session)


def _serve_live(session: WsSession) -> None:
    ws = session.ws
    settings: Settings = current_app.config["SETTINGS"]
    try:
        view = parse_view(request.args.get("precision"), request.args.get("bbox"))
    except ViewError as exc:
        send_json(
            ws,
            {
                "type": "error",
                "error": "invalid_parameter",
                "field": exc.field,
                "message": str(exc),
            },
        )
        ws.close(reason=1008, message="invalid view")
        return
    interval = 1.0 / settings.live_fps
    last_cells: Any = None
    next_at = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_at:
                frame = live_frame(view)
                if frame["cells"] != last_cells or last_cells is None:
                    send_json(ws, frame)
                    last_cells = frame["cells"]
                next_at = now + interval
            raw = ws.receive(timeout=max(0.0, next_at - time.monotonic()))
            if raw is None:
                continue
            if not session.allow_message():
                send_json(
                    ws,
                    {
                        "type": "error",
                        "error": "rate_limited",
                        "message": "too many control messages",
                    },
                )
                continue
            try:
                msg = parse_message(raw)
                if msg["op"] != "view":
                    raise ValueError(f"unknown op {msg['op']!r} (live accepts 'view')")
                view = parse_view(msg.get("precision", view.precision), msg.get("bbox"))
                last_cells = None
                next_at = 0.0
            except (ValueError, ViewError) as exc:
                send_json(ws, {"type": "error", "error": "bad_message", "message": str(exc)})
    except ConnectionClosed:
        return
