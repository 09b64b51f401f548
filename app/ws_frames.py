"""WebSocket text messages framed (and compressed) once, written to many sockets.

Browsers offer permessage-deflate on every socket and simple-websocket accepts it, so
wsproto compressed each frame once per socket, at zlib's default level, keeping a
window per socket: for 1,000 viewers of one view, 2,000 compressions of the same 32 KB
a second, ~0.57 ms each (docs/performance.md, eighth round). Here a message is encoded
at most once per form, on first use, and every socket takes the same bytes:

- plain: FIN + text opcode, the length, the UTF-8 payload (a server never masks);
- deflated: the payload compressed on its own (a fresh compressor, so it refers to
  nothing sent before; RFC 7692 lets a server do that whether or not it announced
  ``server_no_context_takeover``), flushed with Z_SYNC_FLUSH and the trailing
  ``00 00 ff ff`` removed, RSV1 set. Level 1 (as nginx's gzip default): 8x cheaper
  than level 6 for frames ~20 % larger.

A socket's form is read once from what its handshake negotiated (``wire_form``). Every
text message on such a socket goes through ``send_message``, so wsproto's own
compressor, whose window would not know of these messages, is never used on it. A
socket whose client asked for a smaller server window keeps wsproto's path throughout.
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Any

from simple_websocket import ConnectionClosed  # type: ignore[import-untyped]

PLAIN = "plain"
DEFLATE = "deflate"
DEFLATE_LEVEL = 1
WINDOW_BITS = 15
_TAIL = b"\x00\x00\xff\xff"
_TEXT = 0x81  # FIN | text
_TEXT_RSV1 = 0xC1  # FIN | RSV1 (compressed) | text


def frame_header(first_byte: int, length: int) -> bytes:
    if length < 126:
        return bytes((first_byte, length))
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def deflate_message(data: bytes, level: int = DEFLATE_LEVEL) -> bytes:
    """One message's permessage-deflate payload, independent of any earlier one.

    The window is no larger than the message (a smaller one than the client's is always
    allowed): setting up zlib's full 15-bit state cost 48 of the 67 us of a 3 KB frame
    (a street-zoom view's), a 4 KB window and hash 11 us in all for the same bytes."""
    bits = min(WINDOW_BITS, max(9, (len(data) - 1).bit_length()))
    compressor = zlib.compressobj(level, zlib.DEFLATED, -bits, min(8, max(1, bits - 6)))
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if out.endswith(_TAIL):
        out = out[:-4]
    return out or b"\x00"


class WireMessage:
    """A text message and, once asked for, its frames: the same bytes for every
    socket that gets it."""

    __slots__ = ("_deflated", "_lock", "_plain", "text")

    def __init__(self, text: str):
        self.text = text
        self._plain: bytes | None = None
        self._deflated: bytes | None = None
        self._lock = threading.Lock()

    def frame(self, form: str | None) -> bytes:
        """The deflated frame for DEFLATE, else the plain one."""
        if form == DEFLATE:
            if self._deflated is None:
                with self._lock:  # sender threads of one view ask at the same moment
                    if self._deflated is None:
                        body = deflate_message(self.text.encode())
                        self._deflated = frame_header(_TEXT_RSV1, len(body)) + body
            return self._deflated
        if self._plain is None:
            body = self.text.encode()
            self._plain = frame_header(_TEXT, len(body)) + body
        return self._plain


def wire_form(ws: Any) -> str | None:
    """PLAIN or DEFLATE for a simple-websocket server socket whose frames we can write
    ourselves; None to leave every message to wsproto (anything unexpected in the
    negotiated extensions, or a server window below 15 bits)."""
    try:
        extensions = ws.ws.handshake.connection._proto.extensions
    except AttributeError:
        return None
    form = PLAIN
    for extension in extensions:
        if not extension.enabled():
            continue
        if extension.name != "permessage-deflate" or (
            extension.server_max_window_bits != WINDOW_BITS
        ):
            return None
        form = DEFLATE
    return form


def send_message(ws: Any, message: str | WireMessage, form: str | None) -> None:
    """Write one text message to ``ws`` in its ``form`` (see wire_form); raises
    ConnectionClosed once the socket is closed, as ``ws.send`` does."""
    if form is None:
        ws.send(message.text if isinstance(message, WireMessage) else message)
        return
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    wire = message if isinstance(message, WireMessage) else WireMessage(message)
    ws.sock.send(wire.frame(form))
