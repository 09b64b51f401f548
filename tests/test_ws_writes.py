"""Two threads writing big frames through one socket under backpressure (our sender
and simple-websocket's ping thread) must never cut or interleave a frame."""

from __future__ import annotations

import socket
import struct
import threading
import time

from app.ws import WholeFrameSocket


def _exchange(wrap: bool) -> tuple[int, int]:
    """Returns (intact messages, corrupt messages) read by a slow reader."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    a.settimeout(10)  # what servers set: send() may then write only part of a frame
    out = WholeFrameSocket(a) if wrap else a

    def writer(tag: int) -> None:
        try:
            for seq in range(40):
                body = bytes([tag]) * (200_000 + seq)
                out.send(struct.pack("!BI", tag, len(body)) + body)  # count ignored, as there
        except OSError:
            pass  # the reader gave up on a corrupt stream and closed it

    threads = [threading.Thread(target=writer, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    intact = corrupt = 0
    buffer = b""
    deadline = time.monotonic() + 30
    b.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = b.recv(4096)
        except TimeoutError:
            if not any(t.is_alive() for t in threads):
                break
            continue
        time.sleep(0.0002)  # a slow reader keeps the writers under backpressure
        buffer += chunk
        while len(buffer) >= 5:
            tag, length = struct.unpack("!BI", buffer[:5])
            if tag not in (1, 2) or length > 300_000:
                corrupt += 1  # framing lost: nothing after this is readable
                deadline = 0
                break
            if len(buffer) < 5 + length:
                break
            body, buffer = buffer[5 : 5 + length], buffer[5 + length :]
            if body == bytes([tag]) * length:
                intact += 1
            else:
                corrupt += 1
    b.close()  # writers still blocked on a corrupt stream fail at once
    for t in threads:
        t.join(10)
    a.close()
    return intact, corrupt


def test_whole_frames_take_turns():
    assert _exchange(wrap=True) == (80, 0)


def test_the_bare_socket_does_corrupt_frames():
    """The hazard is real: without the wrapper the same exchange loses its framing."""
    intact, corrupt = _exchange(wrap=False)
    assert corrupt > 0 or intact < 80


def everything_written(a: socket.socket, b: socket.socket) -> bytes:
    """Close the writing end, then what the reading end received up to the end."""
    a.close()
    b.settimeout(5)
    received = b""
    while chunk := b.recv(4096):
        received += chunk
    b.close()
    return received


def test_no_data_frame_follows_a_close_frame() -> None:
    """A frame racing simple-websocket's close() (written after the close frame, before
    ``connected`` turns False) is dropped: the client sees the close code, not a
    protocol error. Pings and pongs may still go."""
    a, b = socket.socketpair()
    out = WholeFrameSocket(a)
    data = b"\x81\x05hello"
    out.send(data)
    close = b"\x88\x02\x0f\xa1"  # close 4001
    out.send(close)
    out.send(data)  # a sender's frame, late
    assert out.try_send(data) == 0  # the hub's, late
    pong = b"\x8a\x00"
    out.send(pong)
    received = everything_written(a, b)
    assert received == data + close + pong


def test_a_close_frame_written_behind_a_pong_still_stops_data_frames() -> None:
    """simple-websocket's reader answers a ping and a close that arrived together in
    one write, pong first: the close frame in it counts as much as one written alone."""
    a, b = socket.socketpair()
    out = WholeFrameSocket(a)
    pong_then_close = b"\x8a\x64" + bytes(100) + b"\x88\x02\x03\xe8"  # 100-byte pong, 1000
    out.send(pong_then_close)
    out.send(b"\x81\x05hello")  # late: dropped
    received = everything_written(a, b)
    assert received == pong_then_close


def test_a_client_that_takes_nothing_is_cut_off_and_frees_the_socket():
    """A peer that stops reading (zero window) used to hold a write, and with it the
    socket's lock, forever: every other writer (simple-websocket's pings, the handler's
    close) queued behind it. Now a write that moves no byte for ``stall_s`` shuts the
    connection down and fails, and the writers behind it fail at once too."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    out = WholeFrameSocket(a, stall_s=0.5)
    errors: list[tuple[str, float, BaseException]] = []
    started = time.monotonic()

    def write(name: str, size: int) -> None:
        try:
            out.send(b"\x81" + bytes(size))
        except OSError as exc:
            errors.append((name, time.monotonic() - started, exc))

    big = threading.Thread(target=write, args=("big", 2_000_000))
    big.start()
    time.sleep(0.1)
    behind = threading.Thread(target=write, args=("behind", 10))  # e.g. a ping
    behind.start()
    big.join(10)
    behind.join(10)
    assert not big.is_alive() and not behind.is_alive()
    assert sorted(name for name, _, _ in errors) == ["behind", "big"]
    assert all(elapsed < 5 for _, elapsed, _ in errors)
    assert any(isinstance(exc, TimeoutError) for _, _, exc in errors)
    b.settimeout(5)
    while b.recv(65536):  # what was buffered, then the end of the stream
        pass
    assert not out._lock.locked()
    a.close()
    b.close()
