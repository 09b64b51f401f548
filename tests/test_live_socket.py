"""WS /ws/live on a real server over real Redis: a frame on connect, change-driven frames
capped at LIVE_FPS, view changes, bad messages, and a slow reader that never makes the
server queue more than one frame."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Any

import pytest
import redis
import websocket

from app import create_app
from app.auth import mint_token
from app.live_counts import LiveCounts
from app.ping import Ping
from replay.heat import parse_time_ms
from tests.conftest import ServedApp, free_port, wait_until

VI = (6.4281, 3.4219)  # s14ktf5y
YABA = (6.5095, 3.3711)  # s14mh9nb


@pytest.fixture
def live(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield LiveCounts(client, settings)
    client.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def connect(served: ServedApp, settings, query: str = "precision=5", **kw: Any) -> Any:
    token = mint_token(settings, "viewer")
    return websocket.create_connection(
        f"{served.ws}/ws/live?{query}&token={token}", timeout=5, **kw
    )


def frames_until(ws: Any, predicate: Any, timeout: float = 5) -> list[dict]:
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = json.loads(ws.recv())
        except websocket.WebSocketTimeoutException:
            break
        seen.append(msg)
        if predicate(msg):
            return seen
    raise AssertionError(f"no matching message within {timeout}s; got {seen}")


def test_frame_on_connect_then_frames_on_change_only(settings, live, served):
    live.apply([Ping("a", *VI, now_ms()), Ping("b", *YABA, now_ms())], now_ms())
    ws = connect(served, settings)
    first = json.loads(ws.recv())
    assert first["type"] == "frame" and first["mode"] == "live" and first["precision"] == 5
    assert first["cells"] == [["s14kt", 1], ["s14mh", 1]]
    assert (first["total"], first["max"]) == (2, 1)

    # nothing changes: nothing is sent
    ws.settimeout(1.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()

    # driver a moves to Yaba: one frame with the new counts
    live.apply([Ping("a", *YABA, now_ms())], now_ms())
    ws.settimeout(5)
    moved = json.loads(ws.recv())
    assert moved["cells"] == [["s14mh", 2]]
    assert (moved["total"], moved["max"]) == (2, 2)
    ws.close()


def test_frames_are_capped_at_live_fps(settings, served, live):
    ws = connect(served, settings, "precision=8")
    assert json.loads(ws.recv())["cells"] == []
    received: list[tuple[float, dict]] = []
    start = time.monotonic()

    def read() -> None:
        ws.settimeout(1.5)
        try:
            while True:
                msg = json.loads(ws.recv())
                msg["recv"] = time.time()
                received.append((time.monotonic() - start, msg))
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            pass

    reader = threading.Thread(target=read)
    reader.start()
    # 30 changes in 3 s; LIVE_FPS is 2
    for i in range(30):
        live.apply([Ping("runner", 6.40 + i * 0.001, 3.40, now_ms())], now_ms())
        time.sleep(0.1)
    reader.join(10)
    ws.close()
    assert 4 <= len(received) <= 2 * 4 + 1, [
        (round(t, 3), m.get("t"), m.get("cells")) for t, m in received
    ]
    # the server stamps each frame with the time its round ran: rounds are >= 1/LIVE_FPS
    # apart (checked on the server's clock, not on arrival times, which load can bunch)
    stamps = [parse_time_ms(m["t"]) for _, m in received]
    assert min(b - a for a, b in itertools.pairwise(stamps)) >= 500, stamps
    # the last frame shows the final position
    last_cell = received[-1][1]["cells"]
    assert len(last_cell) == 1 and last_cell[0][1] == 1


def test_view_follows_pan_and_zoom_and_bad_messages_do_not_end_the_stream(settings, served, live):
    t = now_ms()
    live.apply([Ping("a", *VI, t), Ping("b", *YABA, t), Ping("c", *YABA, t)], t)
    ws = connect(served, settings, "precision=6&bbox=3.36,6.50,3.385,6.52")
    assert json.loads(ws.recv())["cells"] == [["s14mh9", 2]]

    ws.send(json.dumps({"op": "view", "precision": 4, "bbox": [3.3, 6.3, 3.5, 6.7]}))
    frame = frames_until(ws, lambda m: m.get("precision") == 4)[-1]
    assert frame["cells"] == [["s14k", 1], ["s14m", 2]]
    assert frame["bbox"] == [3.3, 6.3, 3.5, 6.7]

    ws.send("not json")
    ws.send(json.dumps({"op": "view", "precision": 9}))
    ws.send(json.dumps({"op": "dance"}))
    # numbers JSON holds and Python cannot convert, and nesting past the parser's depth
    ws.send('{"op": "view", "precision": 1e400}')
    ws.send('{"op": "view", "bbox": [1' + "0" * 400 + ", 0, 0, 0]}")
    ws.send("[" * 20_000)
    errors = [json.loads(ws.recv()) for _ in range(6)]
    assert [e["type"] for e in errors] == ["error"] * 6
    assert errors[0]["message"] == "message is not JSON"
    assert "precision" in errors[1]["message"]
    assert "dance" in errors[2]["message"]
    assert "precision" in errors[3]["message"] and "bbox" in errors[4]["message"]
    assert errors[5]["message"] == "message is nested too deeply"

    live.apply([Ping("d", *VI, now_ms())], now_ms())
    frame = frames_until(ws, lambda m: m.get("type") == "frame")[-1]
    assert frame["cells"] == [["s14k", 2], ["s14m", 2]]
    ws.close()


def test_slow_reader_gets_the_newest_frame_not_a_queue(settings, live):
    app = create_app(settings.with_(live_fps=10.0))
    served = ServedApp(app)
    try:
        ws = connect(
            served, settings, "precision=8", sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        )
        hub = app.extensions["heatreplay"].live_hub
        # big frames (8,000 cells, ~170 kB) changing at 10 fps while the client reads
        # nothing: 50 of them exceed what the kernel buffers (4 MB send buffer here)
        t = now_ms()
        live.apply(
            [
                Ping(f"d{i}", 6.3 + (i % 100) * 0.004, 3.2 + (i // 100) * 0.004, t)
                for i in range(8000)
            ],
            t,
        )
        for step in range(50):
            live.apply([Ping(f"d{step}", 6.75, 3.75 + step * 0.0004, now_ms())], now_ms())
            time.sleep(0.1)
        subs = [s for members in hub._views.values() for s in members]
        assert len(subs) == 1
        mailbox = subs[0].mailbox
        # the server held at most one unsent frame and dropped the stale ones
        assert mailbox.replaced > 10
        assert len(mailbox.take(timeout=0)) <= 1
        # when the client finally reads, it catches up to the newest state
        live.apply([Ping("final", 6.9, 3.9, now_ms())], now_ms())
        frame = frames_until(ws, lambda m: ["s14z28pg", 1] in m["cells"], timeout=30)[-1]
        assert frame["total"] == 8001
        ws.close()
    finally:
        served.close()
        app.extensions["heatreplay"].close()


def test_a_failing_handler_closes_with_an_error_frame_not_a_broken_stream(
    settings, served, monkeypatch
):
    """An exception in a socket handler must not become an HTTP 500 written into the
    upgraded stream (the client would read it as a corrupt frame)."""
    from app.live_hub import LiveHub

    def broken(self, view):
        raise RuntimeError("redis pool exhausted, say")

    monkeypatch.setattr(LiveHub, "subscribe", broken)
    ws = connect(served, settings)
    message = json.loads(ws.recv())
    assert message == {"type": "error", "error": "internal", "message": "server error"}
    ws.settimeout(5)
    # then a clean close (websocket-client returns "" for a close frame); before the fix
    # this read raised "rsv is not implemented" on the HTTP 500 written into the stream
    try:
        rest = ws.recv()
    except websocket.WebSocketConnectionClosedException:
        rest = ""
    assert rest == ""


def test_a_sender_thread_starts_only_when_a_socket_needs_one(settings, served, live):
    """Frames the hub writes itself need no sender thread; a control reply does, and
    then that one socket has one (app.live_api.LazySender)."""

    def senders() -> int:
        return sum(1 for t in threading.enumerate() if t.name.endswith("(_pump)"))

    wait_until(lambda: senders() == 0, timeout=10)  # earlier tests' sockets are gone
    live.apply([Ping("a", *VI, now_ms())], now_ms())
    sockets = [connect(served, settings) for _ in range(3)]
    try:
        for ws in sockets:
            assert json.loads(ws.recv())["cells"] == [["s14kt", 1]]
        live.apply([Ping("a", *YABA, now_ms())], now_ms())
        for ws in sockets:
            assert json.loads(ws.recv())["cells"] == [["s14mh", 1]]
        assert senders() == 0
        sockets[0].send('{"op": "nonsense"}')
        assert json.loads(sockets[0].recv())["error"] == "bad_message"
        assert senders() == 1
    finally:
        for ws in sockets:
            ws.close()


def test_live_frame_with_redis_down_is_503_json(settings):
    """The live state is in Redis: with Redis unreachable /api/live says so with a 503
    and Retry-After, as /api/drivers does, not a 500."""
    app = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        headers = {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}
        for path in ("/api/live", "/api/drivers/drv-1"):
            r = app.test_client().get(path, headers=headers)
            assert r.status_code == 503, (path, r.get_data())
            assert r.get_json()["error"] == "unavailable"
            assert "live state is unavailable" in r.get_json()["message"]
            assert int(r.headers["Retry-After"]) >= 1
    finally:
        app.extensions["heatreplay"].close()
