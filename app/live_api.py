"""Live heat: GET /api/live (one frame) and WS /ws/live (a frame on connect, then a new
frame whenever the view's counts change, at most LIVE_FPS per second)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

from flask import Blueprint, request
from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

from app import sock
from app.auth import require_role
from app.live_hub import Mailbox, with_live_markers
from app.services import services
from app.ws import (
    WholeFrameSocket,
    WsSession,
    direct_writer,
    parse_message,
    send_json,
    send_text,
    ws_session,
)
from replay.heat import View, ViewError, build_frame, parse_view

bp = Blueprint("live", __name__)
log = logging.getLogger(__name__)


def live_frame(view: View, now_ms: int | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    svc = services()
    frame = build_frame(svc.live.cells(view.precision, now, view.bbox), view, now, "live")
    return with_live_markers(svc.live, svc.settings, view, frame)


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
    """The handler thread reads control messages; the process's LiveHub writes shared
    frames to the socket or leaves them in its one-slot mailbox, which a sender thread,
    started when first needed (LazySender), drains."""
    ws = session.ws
    try:
        view = parse_view(request.args.get("precision"), request.args.get("bbox"))
    except ViewError as exc:
        send_json(ws, _error("invalid_parameter", str(exc), field=exc.field))
        ws.close(reason=1008, message="invalid view")
        return
    hub = services().live_hub
    writer = direct_writer(ws)
    sender = LazySender(ws, writer)
    sub = hub.subscribe(view, sender.mailbox)
    try:
        while not session.close_if_expired():
            raw = ws.receive(timeout=session.seconds_left())
            if raw is None:
                continue  # the token's expiry came first
            if not session.allow_message():
                sub.mailbox.put_reply(_dumps(_error("rate_limited", "too many control messages")))
                continue
            try:
                msg = parse_message(raw)
                if msg["op"] != "view":
                    raise ValueError(f"unknown op {msg['op']!r} (live accepts 'view')")
                hub.change_view(
                    sub, parse_view(msg.get("precision", sub.view.precision), msg.get("bbox"))
                )
            except (ValueError, ViewError) as exc:
                sub.mailbox.put_reply(_dumps(_error("bad_message", str(exc))))
    except ConnectionClosed:
        pass
    finally:
        hub.unsubscribe(sub)
        sender.join(5)


class LazySender:
    """A socket's sender thread, started the first time its mailbox holds something
    (Mailbox's ``on_pending``): while the hub writes every frame itself, as it does for
    clients that keep up, the socket needs only its handler and simple-websocket's
    reader thread."""

    def __init__(self, ws: Any, writer: WholeFrameSocket | None):
        self.ws = ws
        self.writer = writer
        self.mailbox = Mailbox(writer, self._start)
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        # called under the mailbox's lock: at most one thread is started
        if self._thread is None and not self.mailbox.closed:
            thread = threading.Thread(
                target=_pump, args=(self.ws, self.mailbox, self.writer), daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # the process has no thread left to give
                log.warning("live socket: no sender thread (%s); dropping the socket", exc)
                self.mailbox.abandon()
                return
            self._thread = thread

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def _pump(ws: Any, mailbox: Mailbox, writer: WholeFrameSocket | None) -> None:
    """Send whatever the mailbox holds; a slow client blocks only this thread, and
    meanwhile newer frames replace older ones in the mailbox. A frame is the same
    WireMessage for every socket on its view: framed and compressed once. Frames the
    hub could write at once never come here; the end of one it began does."""
    try:
        while not mailbox.closed:
            items = mailbox.take(timeout=1.0)
            try:
                for item in items:
                    if isinstance(item, bytes):
                        assert writer is not None
                        writer.finish(item)
                    else:
                        send_text(ws, item)
            finally:
                mailbox.sent()
    except (ConnectionClosed, OSError):  # closed, or the peer reset the connection
        mailbox.close()
    finally:
        rest = mailbox.leftover()
        if rest is not None and writer is not None:
            with contextlib.suppress(OSError):
                writer.finish(rest)  # releases the socket's write lock however it ends


def _error(error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "error": error, "message": message, **extra}


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
