"""WebSocket plumbing shared by the live and replay sockets: auth and JSON messages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, request
from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

from app.auth import check_token
from app.errors import ApiError
from app.settings import Settings

AUTH_TIMEOUT_S = 5.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


def send_json(ws: Any, message: dict[str, Any]) -> None:
    ws.send(json.dumps(message, separators=(",", ":")))


def authenticate(ws: Any, role: str) -> dict[str, Any] | None:
    """Token from the ``token`` query parameter, else the first message (either the bare
    token or {"op": "auth", "token": ...}). On failure sends an error message, closes
    with 4401/4403 and returns None."""
    settings: Settings = current_app.config["SETTINGS"]
    token = request.args.get("token")
    try:
        if not token:
            first = ws.receive(timeout=AUTH_TIMEOUT_S)
            if isinstance(first, bytes):
                first = first.decode(errors="replace")
            if first and first.lstrip().startswith("{"):
                try:
                    token = json.loads(first).get("token")
                except (ValueError, AttributeError):
                    token = None
            else:
                token = (first or "").strip() or None
        return check_token(settings, token, role)
    except ApiError as exc:
        code = CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED
        try:
            send_json(ws, {"type": "error", **exc.body()})
            ws.close(reason=code, message=exc.error)
        except ConnectionClosed:
            pass
        return None


class WsSession:
    """One authenticated socket: its claims, and the per-socket limits (control
    messages per second; sockets per token are counted while the session is open)."""

    def __init__(self, ws: Any, claims: dict[str, Any], settings: Settings):
        self.ws = ws
        self.claims = claims
        self.settings = settings
        self._allowance = settings.ws_max_messages_per_s
        self._last = time.monotonic()

    def allow_message(self) -> bool:
        """Token bucket: at most WS_MAX_MESSAGES_PER_S control messages per second."""
        rate = self.settings.ws_max_messages_per_s
        now = time.monotonic()
        self._allowance = min(rate, self._allowance + (now - self._last) * rate)
        self._last = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True


@contextmanager
def ws_session(ws: Any, role: str) -> Iterator[WsSession | None]:
    """Authenticate the socket (see ``authenticate``) and hold its place for the
    socket's lifetime. Yields None when the socket was refused (already closed)."""
    claims = authenticate(ws, role)
    if claims is None:
        yield None
        return
    yield WsSession(ws, claims, current_app.config["SETTINGS"])


def parse_message(raw: str | bytes | None) -> dict[str, Any]:
    """A client control message; raises ValueError with a reason for bad ones."""
    if raw is None:
        raise ValueError("empty message")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ValueError("message is not JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError('message must be an object with an "op"')
    return msg
