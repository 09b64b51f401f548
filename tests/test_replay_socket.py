"""WS /ws/replay on a real server with an injected manual clock: exact frames at the
simulated times of the pacing, pause / play / seek / speed / view / end, coalescing
under the frame budget, bad control messages answered with errors while the stream
goes on. No sleeping: the clock moves only when the test moves it."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websocket
from werkzeug.serving import make_server

from app import create_app
from app.auth import mint_token
from app.ping import Ping
from app.ws_frames import deflate_message
from bench.deflate_client import DeflateSocket
from replay.playback import ManualClock
from tests.conftest import free_port
from tests.replay_support import ensure_days, ms, truncate, write_history

T0 = datetime(2026, 11, 20, 17, 0, tzinfo=UTC)
YABA = (6.5095, 3.3711)  # s14mh9nb
IKEJA = (6.6018, 3.3515)  # s14ms3b6


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(seconds: float) -> int:
    return ms(T0 + timedelta(seconds=seconds))


@pytest.fixture
def server(settings, db):
    """History: 'a' pings in Yaba every 5 s over [0, 60 s); 'b' in Ikeja at 25 s and
    45 s (W = 10 s). A live server on a free port with a manual replay clock."""
    truncate(db)
    ensure_days(db, at(0), at(0))
    pings = [Ping("a", *YABA, at(s)) for s in range(0, 60, 5)]
    pings += [Ping("b", *IKEJA, at(25)), Ping("b", *IKEJA, at(45))]
    write_history(db, [pings])
    clock = ManualClock()
    app = create_app(settings, {"REPLAY_CLOCK": clock})
    port = free_port()
    srv = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield port, clock, mint_token(settings, "viewer")
    srv.shutdown()
    thread.join(10)
    app.extensions["heatreplay"].close()


class Client:
    def __init__(self, port: int, query: str):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/ws/replay?{query}", timeout=10
        )

    def recv(self) -> dict[str, Any]:
        return json.loads(self.ws.recv())

    def send(self, msg: Any) -> None:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def frame(self) -> tuple[str, list]:
        msg = self.recv()
        assert msg["type"] == "frame" and msg["mode"] == "replay", msg
        return msg["t"], msg["cells"]

    def control(self, msg: Any) -> dict[str, Any]:
        self.send(msg)
        reply = self.recv()
        assert reply["type"] == "state", reply
        return reply


def test_replay_stream_controls(server):
    port, clock, token = server
    c = Client(port, f"from={iso(0)}&to={at(60)}&speed=60&step=10&precision=6&token={token}")
    assert c.frame() == (iso(0), [["s14mh9", 1]])  # at once, no clock movement
    clock.advance(10 / 60)  # one step of 10 s at 60x
    assert c.frame() == (iso(10), [["s14mh9", 1]])
    clock.advance(10 / 60)
    assert c.frame() == (iso(20), [["s14mh9", 1]])

    state = c.control({"op": "pause"})
    assert (state["playing"], state["paused"], state["t"]) == (False, True, iso(20))
    clock.advance(30)  # paused: simulated time stands still
    state = c.control({"op": "speed", "value": 60})  # the next message is not a frame
    assert state["speed"] == 60
    assert c.control({"op": "play"})["playing"] is True
    clock.advance(10 / 60)
    assert c.frame() == (iso(30), [["s14mh9", 1], ["s14ms3", 1]])

    assert c.control({"op": "seek", "t": at(45)})["t"] == iso(45)
    assert c.frame() == (iso(45), [["s14mh9", 1], ["s14ms3", 1]])  # instant
    assert c.control({"op": "speed", "value": 120})["speed"] == 120
    clock.advance(10 / 120)
    assert c.frame() == (iso(55), [["s14mh9", 1]])  # b's 45 s ping left the window (45, 55]

    assert c.control({"op": "view", "precision": 5, "bbox": [3.36, 6.5, 3.385, 6.52]})
    msg = c.recv()  # the view change re-sends the frame on screen
    assert (msg["t"], msg["precision"], msg["cells"], msg["bbox"]) == (
        iso(55),
        5,
        [["s14mh", 1]],
        [3.36, 6.5, 3.385, 6.52],
    )
    clock.advance(5 / 120)
    assert c.frame() == (iso(60), [["s14mh", 1]])
    assert c.recv() == {"type": "end"}

    # after the end, a seek back shows that frame and playing goes on
    assert c.control({"op": "seek", "t": iso(40)})["ended"] is False
    assert c.frame() == (iso(40), [["s14mh", 1]])
    c.ws.close()


def test_bad_control_messages_do_not_stop_the_stream(server):
    port, clock, token = server
    c = Client(port, f"from={iso(0)}&to={iso(60)}&precision=6&token={token}")
    assert c.frame()[0] == iso(0)
    for bad in (
        "not json",
        "[1, 2]",
        {"op": "fly"},
        {"op": "speed", "value": 0},
        {"op": "speed", "value": 5000},
        {"op": "speed", "value": "fast"},
        {"op": "seek", "t": "garbage"},
        {"op": "seek", "t": iso(61)},
        {"op": "seek"},
        {"op": "view", "precision": 9},
        {"op": "view", "bbox": [-30, -30, 30, 30]},
        # numbers JSON holds and Python cannot convert, and nesting past the parser's depth
        '{"op": "seek", "t": 1e400}',
        '{"op": "seek", "t": 1' + "0" * 400 + "}",
        {"op": "seek", "t": "1763658201512000"},  # microseconds
        '{"op": "view", "precision": 1e400}',
        '{"op": "view", "bbox": [1' + "0" * 400 + ", 0, 0, 0]}",
        '{"op": "speed", "value": 1' + "0" * 400 + "}",
        "[" * 20_000,
    ):
        c.send(bad)
        msg = c.recv()
        assert msg["type"] == "error" and msg["error"] == "bad_message" and msg["message"], bad
    clock.advance(10 / 60)  # default speed 60, step 10 s: the stream went on
    assert c.frame()[0] == iso(10)
    c.ws.close()


def test_coalescing_under_the_frame_budget(server):
    port, clock, token = server
    # 10 s steps at 3600x are due every 2.8 ms; REPLAY_MAX_FPS = 30 allows one per 33 ms
    c = Client(port, f"from={iso(0)}&to={iso(600)}&speed=3600&step=10&token={token}")
    assert c.frame()[0] == iso(0)
    clock.advance(1 / 30)
    assert c.frame()[0] == iso(120)
    clock.advance(1 / 30)
    assert c.frame()[0] == iso(240)
    clock.advance(10.0)
    assert c.frame()[0] == iso(600)
    assert c.recv() == {"type": "end"}
    c.ws.close()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from={a}&to={a}", "from"),
        ("from={a}&to={b}&speed=0", "speed"),
        ("from={a}&to={b}&speed=abc", "speed"),
        ("from={a}&to={b}&step=0", "step"),
        ("from={a}&to={b}&precision=0", "precision"),
        ("from={a}&to={b}&bbox=-30,-30,30,30", "bbox"),
        ("to={b}", "from"),
        ("from=1763658201512000&to={b}", "from"),
        ("from={a}&to=--5", "to"),
    ],
)
def test_bad_parameters_close_with_an_error(server, query, field):
    port, _clock, token = server
    c = Client(port, query.format(a=at(0), b=at(60)) + f"&token={token}")
    msg = c.recv()
    assert (msg["type"], msg["error"], msg["field"]) == ("error", "invalid_parameter", field)
    opcode, _ = c.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE


def test_socket_needs_a_viewer_token(server, settings):
    port, _clock, _token = server
    c = Client(port, f"from={at(0)}&to={at(60)}&token={mint_token(settings, 'ingest')}")
    msg = c.recv()
    assert (msg["type"], msg["error"]) == ("error", "forbidden")


def test_a_browser_like_socket_gets_each_replay_message_compressed_on_its_own(server):
    """Chromium offers permessage-deflate; every message of the stream comes compressed
    alone (app.ws_frames) and one inflater that keeps its window reads them all."""
    port, clock, token = server
    ws = DeflateSocket(
        f"ws://127.0.0.1:{port}/ws/replay?from={iso(0)}&to={at(30)}&speed=60&step=10"
        f"&precision=6&token={token}",
        timeout=10,
    )
    try:
        assert ws.extensions.startswith("permessage-deflate")
        seen = [json.loads(ws.recv())]
        for _ in range(3):
            clock.advance(10 / 60)
            seen.append(json.loads(ws.recv()))
            assert ws.last_wire == deflate_message(
                json.dumps(seen[-1], separators=(",", ":")).encode()
            )
        assert [(m["t"], m["cells"]) for m in seen] == [
            (iso(s), [["s14mh9", 1]] + ([["s14ms3", 1]] if s >= 25 else []))
            for s in (0, 10, 20, 30)
        ]
        assert json.loads(ws.recv()) == {"type": "end"}
        assert ws.compressed_messages == 5
    finally:
        ws.close()
