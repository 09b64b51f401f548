"""A live socket's mailbox with the hub writing frames itself (app.live_hub.Mailbox,
app.ws.WholeFrameSocket.try_send), over a real socket pair: a frame the socket takes at
once never wakes the sender; a frame it takes in part keeps the socket to itself until
its end is written; and nothing ever overtakes what is already waiting."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from app.live_api import _pump
from app.live_hub import QUEUED, REPLACED, WRITTEN, Mailbox
from app.ws import WholeFrameSocket
from app.ws_frames import PLAIN, WireMessage


@pytest.fixture
def pair() -> Iterator[tuple[WholeFrameSocket, socket.socket]]:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    yield WholeFrameSocket(a, PLAIN), b
    a.close()
    b.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    sock.settimeout(5)
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return out


def test_a_frame_the_socket_takes_at_once_is_written_by_the_putter(pair):
    sock, peer = pair
    box = Mailbox(sock)
    frame = WireMessage('{"type":"frame","cells":[["s14mh",1]]}')
    assert box.put_frame(frame) == WRITTEN
    assert read_exactly(peer, len(frame.frame(PLAIN))) == frame.frame(PLAIN)
    assert box.take(0) == [] and box.written == 1


def test_a_frame_taken_in_part_holds_the_socket_until_its_end_is_written(pair):
    sock, peer = pair
    box = Mailbox(sock)
    big = WireMessage("x" * 1_000_000)
    wire = big.frame(PLAIN)
    assert box.put_frame(big) == WRITTEN  # begun: the kernel took what fitted
    (rest,) = box.take(0)
    assert isinstance(rest, bytes) and 0 < len(rest) < len(wire)
    assert sock._lock.locked()  # kept for the rest

    # meanwhile simple-websocket's ping thread wants the socket: it must wait
    ping = b"\x89\x00"
    pinged = threading.Event()
    pinger = threading.Thread(target=lambda: (sock.send(ping), pinged.set()))
    pinger.start()
    # and a newer frame waits in the mailbox while the sender holds the rest
    newer = WireMessage('{"n":2}')
    newest = WireMessage('{"n":3}')
    assert box.put_frame(newer) == QUEUED
    assert box.put_frame(newest) == REPLACED
    assert not pinged.wait(0.2)

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_exactly(peer, len(wire) + len(ping))))
    reader.start()
    box.writer.finish(rest)  # type: ignore[union-attr]  # what the sender thread does
    box.sent()
    pinger.join(5)
    reader.join(10)
    assert got == [wire + ping]  # the frame whole, then the ping: nothing in between
    assert box.take(0) == [newest]
    box.sent()


def test_frames_wait_behind_replies_and_a_busy_sender(pair):
    sock, peer = pair
    box = Mailbox(sock)
    box.put_reply('{"type":"error"}')
    first = WireMessage('{"n":1}')
    assert box.put_frame(first) == QUEUED  # the reply goes first, so the frame waits
    assert box.take(0) == ['{"type":"error"}', first]
    second = WireMessage('{"n":2}')
    assert box.put_frame(second) == QUEUED  # taken items not yet sent: still behind them
    box.sent()
    assert box.take(0) == [second]
    box.sent()
    third = WireMessage('{"n":3}')
    assert box.put_frame(third) == WRITTEN
    assert read_exactly(peer, len(third.frame(PLAIN))) == third.frame(PLAIN)


def test_a_full_socket_leaves_the_frame_to_the_sender(pair):
    sock, _ = pair
    n = 65536
    while n == 65536:  # fill both buffers
        n = sock.try_send(b"\x00" * 65536)
    if n:
        sock.finish(b"")  # a partial write kept the lock
    box = Mailbox(sock)
    frame = WireMessage('{"n":1}')
    assert box.put_frame(frame) == QUEUED
    assert box.take(0) == [frame] and box.written == 0


def test_a_frame_begun_before_the_socket_closed_is_finished_and_the_socket_unlocked(pair):
    """The hub wrote part of a frame; the socket's handler ended (the mailbox closed)
    before the sender looked. The sender still writes the end and lets go of the lock,
    or the close frame after it would wait forever."""
    sock, peer = pair
    box = Mailbox(sock)
    big = WireMessage("y" * 1_000_000)
    wire = big.frame(PLAIN)
    assert box.put_frame(big) == WRITTEN
    assert sock._lock.locked()
    box.close()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_exactly(peer, len(wire))))
    reader.start()
    _pump(None, box, box.writer)  # returns at once: the mailbox is closed
    reader.join(10)
    assert got == [wire] and not sock._lock.locked()


def test_a_socket_that_gets_no_sender_thread_is_dropped_not_left_locked(pair, monkeypatch):
    """The hub began a frame, the socket took part of it, and no sender thread could be
    started for the rest (a process at its thread limit). The exception used to leave
    the hub's round (ending the hub thread) with the socket locked for good."""
    from app.live_api import LazySender

    sock, peer = pair
    start = threading.Thread.start

    def no_thread_for_senders(self: threading.Thread) -> None:
        if "_pump" in self.name:
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", no_thread_for_senders)
    sender = LazySender(object(), sock)
    assert sender.mailbox.put_frame(WireMessage("x" * 1_000_000)) == WRITTEN  # in part
    assert sender.mailbox.closed
    assert not sock._lock.locked()
    peer.settimeout(5)
    while peer.recv(65536):  # the part that went out, then the end of the stream
        pass
    sender.join(1)  # nothing to join, and no error
    assert sock.closing  # later frames are dropped, not written after the cut
