"""Frames written once for many sockets (app.ws_frames): byte-equal to wsproto's plain
frames, decodable by wsproto's and a browser-like inflater when compressed, and on a
real server the same bytes for every socket of a view, whatever the client negotiated."""

from __future__ import annotations

import json
import time
import zlib

import pytest
import redis
import websocket
from hypothesis import given
from hypothesis import strategies as st
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from app.auth import mint_token
from app.live_counts import LiveCounts
from app.ping import Ping
from app.ws_frames import DEFLATE, PLAIN, WireMessage, deflate_message
from bench.deflate_client import DeflateSocket
from tests.conftest import ServedApp, wait_until

VI = (6.4281, 3.4219)  # s14ktf5y
YABA = (6.5095, 3.3711)  # s14mh9nb


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_plain_frames_are_wsprotos_bytes(size: int) -> None:
    text = ("héat" * (size // 5 + 1))[:size]
    server = FrameProtocol(client=False, extensions=[])
    assert WireMessage(text).frame(PLAIN) == server.send_data(text, fin=True)


def _deflate_client() -> FrameProtocol:
    ext = PerMessageDeflate()
    ext._enabled = True  # what a completed handshake leaves (server window 15 bits)
    return FrameProtocol(client=True, extensions=[ext])


@given(
    st.lists(
        st.one_of(
            st.text(min_size=0, max_size=3000),
            # long and repetitive, like frames: back-references across the window
            st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=40), st.integers(1, 3000)),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_deflated_frames_decode_in_wsproto_one_after_another(texts: list[str]) -> None:
    """One client-side decoder (its inflater keeps its window between messages, as
    RFC 7692's default context takeover has it) reads a run of our messages, each
    compressed on its own."""
    client = _deflate_client()
    for text in texts:
        client.receive_bytes(WireMessage(text).frame(DEFLATE))
    got = [frame.payload for frame in client.received_frames()]
    assert got == texts


def test_an_independent_message_decodes_after_context_the_client_kept() -> None:
    """A browser's inflater holds earlier messages' window; a message compressed alone
    refers to none of it, so it still decodes (and so does a wsproto-compressed one
    sent before ours)."""
    earlier = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = b'{"type":"frame","cells":[["s14kt",1]]}' * 50
    inflater = zlib.decompressobj(-15)
    tail = b"\x00\x00\xff\xff"
    wire = earlier.compress(first) + earlier.flush(zlib.Z_SYNC_FLUSH)
    assert inflater.decompress(wire) == first
    second = b'{"type":"frame","cells":[["s14mh",2]]}' * 50
    assert inflater.decompress(deflate_message(second) + tail) == second
    assert len(deflate_message(second)) < len(second) / 10
    assert inflater.decompress(deflate_message(b"") + tail) == b""


@pytest.fixture
def live(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield LiveCounts(client, settings)
    client.close()


def _url(served: ServedApp, settings, query: str) -> str:
    return f"{served.ws}/ws/live?{query}&token={mint_token(settings, 'viewer')}"


def test_every_socket_of_a_view_gets_the_same_frame_whatever_it_negotiated(settings, served, live):
    now = int(time.time() * 1000)
    live.apply([Ping("a", *VI, now), Ping("b", *YABA, now)], now)
    url = _url(served, settings, "precision=5")
    browsers = [DeflateSocket(url, timeout=5) for _ in range(2)]
    small_window = DeflateSocket(
        url, timeout=5, offer="permessage-deflate; server_max_window_bits=10"
    )
    plain = websocket.create_connection(url, timeout=5)
    try:
        assert [b.extensions for b in browsers] == [
            "permessage-deflate; client_max_window_bits=15"
        ] * 2
        assert "server_max_window_bits=10" in small_window.extensions
        first = [json.loads(b.recv()) for b in browsers]
        assert first[0]["cells"] == [["s14kt", 1], ["s14mh", 1]]
        # frames on connect may be built apart; the next round's frame is one message
        # for all: the same compressed bytes on both browser sockets
        small_window.recv()
        plain.recv()
        later = int(time.time() * 1000)
        live.apply([Ping("a", *YABA, later)], later)
        moved = [b.recv() for b in browsers]
        # the hub wrote the round's frame itself to the three sockets it frames (they had
        # room); the 10-bit one, framed by wsproto, took it through its sender thread
        stats = redis.Redis.from_url(settings.redis_url)
        key = settings.redis_key_prefix + "stats"
        fields = ("live_frames_written", "live_frames_queued", "live_frames_replaced")

        def outcomes() -> list[int]:
            return [int(v or 0) for v in stats.hmget(key, fields)]

        wait_until(lambda: sum(outcomes()) >= 4, timeout=5)
        assert outcomes() == [3, 1, 0]
        stats.close()
        assert browsers[0].last_wire == browsers[1].last_wire
        assert browsers[0].last_wire == deflate_message(moved[0].encode())
        assert all(b.compressed_messages == 2 for b in browsers)
        expected = json.loads(moved[0])
        assert expected["cells"] == [["s14mh", 2]]
        # the same frame, t included, through wsproto's own compressor (a 10-bit server
        # window is not one we compress for) and uncompressed
        assert json.loads(small_window.recv()) == expected
        assert small_window.compressed_messages == 2
        assert json.loads(plain.recv()) == expected

        # a control reply between frames decodes on the compressed socket, and frames
        # after it too (nothing refers to a window the client does not have)
        browsers[0].send_text('{"op": "nonsense"}')
        reply = json.loads(browsers[0].recv())
        assert reply["type"] == "error" and reply["error"] == "bad_message"
        live.apply([Ping("b", *VI, later + 1)], later + 1)
        after = json.loads(browsers[0].recv())
        assert after["cells"] == [["s14kt", 1], ["s14mh", 1]]
        assert browsers[0].compressed_messages == 4
    finally:
        for client in (*browsers, small_window):
            client.close()
        plain.close()
