"""A WebSocket client that negotiates permessage-deflate as browsers do.

Chromium and Firefox offer ``permessage-deflate; client_max_window_bits`` on every
socket and the server (simple-websocket via wsproto) accepts it, so a browser viewer is
sent compressed frames. websocket-client, which the other benches use, offers no
extensions and refuses compressed frames, so it measures a cheaper server than browsers
get. This client reads frames itself: compressed messages are inflated with one
inflater per connection (context takeover, as RFC 7692 allows by default, reset after
each message when the server says server_no_context_takeover); pings are answered.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import zlib
from urllib.parse import urlsplit

OFFER = "permessage-deflate; client_max_window_bits"
_TAIL = b"\x00\x00\xff\xff"


class Closed(Exception):
    """The server closed the connection (a close frame, or end of stream)."""


class DeflateSocket:
    def __init__(self, url: str, timeout: float | None = 30.0, offer: str | None = OFFER):
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head, self._buf = self._read_head()
        status, *headers = head.decode("latin-1").split("\r\n")
        if " 101 " not in status + " ":
            raise ConnectionError(f"handshake refused: {status}")
        extensions = ", ".join(
            value.strip()
            for name, _, value in (h.partition(":") for h in headers)
            if name.strip().lower() == "sec-websocket-extensions"
        )
        #: what the server accepted, e.g. "permessage-deflate" ("" if nothing)
        self.extensions = extensions
        self.deflate = "permessage-deflate" in extensions
        self.server_no_context_takeover = "server_no_context_takeover" in extensions
        self._inflater = zlib.decompressobj(-15)
        self.compressed_messages = 0
        self.wire_bytes = 0
        self.last_wire = b""  # the last message's payload as it came off the wire

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def _read_head(self) -> tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise Closed("end of stream")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _frame(self) -> tuple[bool, bool, int, bytes]:
        b0, b1 = self._exactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._exactly(8))
        if b1 & 0x80:
            raise ConnectionError("the server masked a frame")
        return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, self._exactly(length)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text: str) -> None:
        """Uncompressed (RSV1 clear), which a client may always send."""
        self._send(0x1, text.encode())

    def recv(self) -> str:
        """The next text message, inflated if it was compressed."""
        parts: list[bytes] = []
        compressed = False
        while True:
            fin, rsv1, opcode, payload = self._frame()
            self.wire_bytes += len(payload)
            if opcode == 0x8:
                raise Closed(payload[2:].decode(errors="replace"))
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                compressed = rsv1
                parts = []
            parts.append(payload)
            if fin:
                break
        data = self.last_wire = b"".join(parts)
        if compressed:
            if not self.deflate:
                raise ConnectionError("a compressed frame on a socket without deflate")
            self.compressed_messages += 1
            data = self._inflater.decompress(data + _TAIL)
            if self.server_no_context_takeover:
                self._inflater = zlib.decompressobj(-15)
        return data.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send(0x8, struct.pack("!H", 1000))
        self.sock.close()
