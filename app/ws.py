"""WebSocket plumbing shared by the live and replay sockets: auth, per-socket limits and
JSON messages.

Close codes (the UI stops reconnecting on 4401/4403; docs/auth.md lists them):
4401 unauthorised (missing, bad or expired token), 4403 forbidden (wrong role),
4429 too many sockets open with this token, 1013 this web process serves all the sockets
it has threads for (WEB_THREADS - WEB_HTTP_THREADS). Each close is preceded by a
``{"type": "error", "error": ..., "message": ...}`` message saying why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, request
from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

from app.auth import check_token
from app.errors import ApiError
from app.limits import SLOT_LEASE_S, SocketSlots, TokenBucket, TooManySockets, token_id
from app.services import per_app, services
from app.settings import Settings
from app.ws_frames import WireMessage, send_message, wire_form

log = logging.getLogger(__name__)
AUTH_TIMEOUT_S = 5.0
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455's "try again later": this process is full
# A client whose connection takes no byte of a frame for this long is gone (or frozen,
# or hostile): its socket is shut down. Without a limit one write waited forever holding
# the socket's write lock, and with it simple-websocket's pings (the only thing that
# drops dead clients), the handler, and the socket's place in the process.
WRITE_STALL_S = 30.0


def send_json(ws: Any, message: dict[str, Any]) -> None:
    send_text(ws, json.dumps(message, separators=(",", ":")))


def send_text(ws: Any, message: str | WireMessage) -> None:
    """Every text message our sockets send goes through here (app.ws_frames): framed
    and, where the client negotiated permessage-deflate, compressed once per message."""
    sock = ws.sock
    send_message(ws, message, sock.form if isinstance(sock, WholeFrameSocket) else None)


def refuse(ws: Any, code: int, error: str, message: str) -> None:
    """Say why in an error message, then close with ``code``; the close reason repeats
    the message (cut to the 123 bytes a close frame allows) for clients that only see
    the close event."""
    reason = message.encode()[:123].decode(errors="ignore")
    try:
        send_json(ws, {"type": "error", "error": error, "message": message})
        ws.close(reason=code, message=reason)
    except (ConnectionClosed, OSError):  # gone already: nothing to tell
        pass


def _read_token(ws: Any) -> str | None:
    """The ``token`` query parameter, else the first message: the bare token or
    {"op": "auth", "token": ...}. Nothing within AUTH_TIMEOUT_S means no token."""
    token = request.args.get("token")
    if token:
        return token
    first = ws.receive(timeout=AUTH_TIMEOUT_S)
    if isinstance(first, bytes):
        first = first.decode(errors="replace")
    if first and first.lstrip().startswith("{"):
        try:
            value = json.loads(first).get("token")
        except (ValueError, AttributeError, RecursionError):
            return None
        return value if isinstance(value, str) else None
    return (first or "").strip() or None


def authenticate(ws: Any, role: str) -> tuple[dict[str, Any], str] | None:
    """(claims, token) of an authorised socket. On failure sends an error message,
    closes with 4401/4403 and returns None."""
    settings: Settings = current_app.config["SETTINGS"]
    try:
        token = _read_token(ws)
        return check_token(settings, token, role), token or ""
    except ApiError as exc:
        code = CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED
        refuse(ws, code, exc.error, exc.message)
        return None
    except ConnectionClosed:
        return None


def socket_slots() -> SocketSlots:
    """This app's (this process's) sockets-per-token accounting."""

    def make(app: Flask) -> SocketSlots:
        settings: Settings = app.config["SETTINGS"]
        return SocketSlots(
            services().redis,
            settings.redis_key_prefix,
            settings.max_sockets_per_token,
            float(app.config.get("SOCKET_SLOT_LEASE_S", SLOT_LEASE_S)),
        )

    return per_app("heatreplay.socket_slots", make)


class ProcessSockets:
    """The sockets this web process serves at once. gunicorn's gthread worker gives
    each open socket one of its WEB_THREADS threads for the socket's lifetime; once
    sockets held them all, ingest and API requests waited for a thread that never came.
    So sockets stop WEB_HTTP_THREADS short of the pool."""

    def __init__(self, settings: Settings):
        self.cap = settings.web_threads - settings.web_http_threads
        self.reason = (
            f"this server process already serves {self.cap} sockets, all it has threads "
            f"for (WEB_THREADS {settings.web_threads} - WEB_HTTP_THREADS "
            f"{settings.web_http_threads}); try again shortly"
        )
        self.open = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.open >= self.cap:
                return False
            self.open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.open -= 1


def process_sockets() -> ProcessSockets:
    return per_app("heatreplay.process_sockets", lambda app: ProcessSockets(app.config["SETTINGS"]))


class WsSession:
    """One authenticated socket: its claims and its control-message budget."""

    def __init__(self, ws: Any, claims: dict[str, Any], settings: Settings):
        self.ws = ws
        self.claims = claims
        self.settings = settings
        self._bucket = TokenBucket(settings.ws_max_messages_per_s)
        # the token stops being valid for a new request here (exp + JWT_LEEWAY_S); an
        # open socket is closed then too, not kept alive by an expired token
        self.expires_at = float(claims["exp"]) + settings.jwt_leeway_s

    def seconds_left(self) -> float:
        return self.expires_at - time.time()

    def close_if_expired(self) -> bool:
        """Close with 4401 and a "token expired" error once the token has expired;
        True if it did (the handler then returns)."""
        if self.seconds_left() > 0:
            return False
        refuse(self.ws, CLOSE_UNAUTHORIZED, "unauthorized", "token expired")
        return True

    def allow_message(self) -> bool:
        """Token bucket: at most WS_MAX_MESSAGES_PER_S control messages per second
        (bursts of that many, at least 1). The handler answers a refused message with
        a ``{"type": "error", "error": "rate_limited"}`` and keeps the socket open."""
        return self._bucket.allow()


@contextmanager
def ws_session(ws: Any, role: str) -> Iterator[WsSession | None]:
    """Take one of this process's socket places (ProcessSockets), authenticate the
    socket (see ``authenticate``), take one of the token's MAX_SOCKETS_PER_TOKEN slots
    for the socket's lifetime, and give both back however the handler ends. Yields None
    when the socket was refused (already closed)."""
    make_writes_safe(ws)
    here = process_sockets()
    if not here.acquire():
        refuse(ws, CLOSE_TRY_AGAIN_LATER, "server_busy", here.reason)
        yield None
        return
    try:
        with _token_slot(ws, role) as session:
            yield session
    finally:
        here.release()


@contextmanager
def _token_slot(ws: Any, role: str) -> Iterator[WsSession | None]:
    auth = authenticate(ws, role)
    if auth is None:
        yield None
        return
    claims, token = auth
    settings: Settings = current_app.config["SETTINGS"]
    slots = socket_slots()
    try:
        slot = slots.acquire(token_id(claims, token))
    except TooManySockets as exc:
        refuse(ws, CLOSE_TOO_MANY_SOCKETS, "too_many_sockets", str(exc))
        yield None
        return
    try:
        yield WsSession(ws, claims, settings)
    except ConnectionClosed:
        raise
    except OSError as exc:  # the connection broke under a write: reset, or shut as stalled
        log.info("socket closed while writing: %s", exc)
    except Exception:
        # Never let an error leave a socket handler: the framework would render an
        # HTTP 500 and the server would write it into the upgraded stream, which the
        # client then reads as a corrupt frame. Say so in a frame and close (1011).
        log.exception("socket handler failed")
        with contextlib.suppress(Exception):
            send_json(ws, {"type": "error", "error": "internal", "message": "server error"})
            ws.close(reason=CLOSE_INTERNAL_ERROR, message="server error")
    finally:
        slots.release(slot)


class WholeFrameSocket:
    """What simple-websocket writes through. It calls ``sock.send(frame)`` and ignores
    a partial write, and its own thread sends pings and pongs on the same socket as our
    sender thread: under backpressure a frame was cut short, or two frames interleaved,
    and the client saw garbage ("rsv is not implemented"). Here every write is whole
    (``sendall``) and writes take turns. Once a close frame has gone out, data frames
    are dropped: RFC 6455 allows none after it, and a frame that raced the close (the
    hub's, or a sender's that checked ``connected`` just before) would reach the client
    as a protocol error instead of the close code. ``form`` is how our text messages
    are framed on this socket (app.ws_frames.wire_form)."""

    def __init__(
        self, sock: socket.socket, form: str | None = None, stall_s: float = WRITE_STALL_S
    ):
        self._sock = sock
        self._lock = threading.Lock()
        self.form = form
        self.stall_s = stall_s
        self.closing = False  # a close frame was written

    def send(self, data: bytes) -> int:
        with self._lock:
            if self.closing and data and not data[0] & 0x08:
                return len(data)  # a data frame after our close frame: not sent
            self._send_all(data)
            if data and data[0] & 0x08 and _holds_close_frame(data):
                self.closing = True
        return len(data)

    def _send_all(self, data: bytes) -> None:
        """sendall, except that a connection taking nothing for ``stall_s`` is shut
        down (TimeoutError): the reader thread then sees the end of the stream, the
        handler a closed socket, and every writer waiting for the lock an error."""
        view = memoryview(data)
        poller: select.poll | None = None
        while view:
            try:
                view = view[self._sock.send(view, socket.MSG_DONTWAIT) :]
                continue
            except BlockingIOError:
                pass
            if poller is None:
                poller = select.poll()
                poller.register(self._sock, select.POLLOUT)
            if not poller.poll(self.stall_s * 1000):
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                raise TimeoutError(f"the client took nothing for {self.stall_s:g} s")

    def try_send(self, data: bytes) -> int:
        """Write without waiting, for the live hub: returns the bytes the kernel took
        at once, 0 if none (another write under way, the buffer full, an error: the
        frame then waits for the sender thread, which meets the error itself). Between
        0 and len(data) the socket stays locked until ``finish`` writes the rest, so
        nothing comes between a frame's two parts."""
        if not self._lock.acquire(blocking=False):
            return 0
        if self.closing:
            self._lock.release()
            return 0
        try:
            n = self._sock.send(data, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError included
            n = 0
        if not 0 < n < len(data):
            self._lock.release()
        return n

    def finish(self, rest: bytes) -> None:
        """The end of a frame ``try_send`` began; the lock it kept is released here."""
        try:
            self._send_all(rest)
        finally:
            self._lock.release()

    def abandon(self, frame_begun: bool) -> None:
        """Drop the connection (the live hub's last resort when a socket can get no
        sender): shut it down, so no byte follows, and release the lock a begun frame
        holds, so no writer waits for a rest that will never be written."""
        self.closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if frame_begun:
            self._lock.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _holds_close_frame(data: bytes) -> bool:
    """Whether control frames written in one go (simple-websocket's reader answers a
    ping and a close in the same write: pong, then close) include a close frame.
    Server frames are unmasked: a header is 2 bytes plus 2 or 8 of extended length."""
    at = 0
    while at + 2 <= len(data):
        if data[at] & 0x0F == 0x8:
            return True
        length = data[at + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        at += header + length
    return False


def direct_writer(ws: Any) -> WholeFrameSocket | None:
    """The socket the live hub may write frames to itself (``try_send``/``finish``;
    once the close frame is out it takes none); None where a non-blocking write is not
    ours to make: wsproto frames this socket's messages, or the socket has a timeout
    (Python would wait in poll first)."""
    sock = ws.sock
    if not isinstance(sock, WholeFrameSocket) or sock.form is None or sock.gettimeout():
        return None
    return sock


def make_writes_safe(ws: Any) -> None:
    if not isinstance(ws.sock, WholeFrameSocket):
        ws.sock = WholeFrameSocket(ws.sock, wire_form(ws))


def parse_message(raw: str | bytes | None) -> dict[str, Any]:
    """A client control message; raises ValueError with a reason for bad ones."""
    if raw is None:
        raise ValueError("empty message")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ValueError("message is not JSON") from None
    except RecursionError:
        raise ValueError("message is nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError('message must be an object with an "op"')
    return msg
