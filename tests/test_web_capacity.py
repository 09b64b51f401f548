"""`heatreplay web` (gunicorn, as deployed) with more viewers than threads: every open
socket holds a thread, so sockets are capped per process at WEB_THREADS minus
WEB_HTTP_THREADS and the rest are refused with a reason (close 1013, error
``server_busy``), leaving threads for ingest and the API. Before the cap, the sockets
took every thread and a POST of pings waited forever."""

from __future__ import annotations

import json
import time

import pytest
import requests
import websocket

from app.auth import mint_token
from tests.conftest import free_port
from tests.test_browser_live import WebProcess


@pytest.fixture
def small_web(settings):
    web = WebProcess(settings, free_port(), WEB_THREADS="6", WEB_HTTP_THREADS="2")
    web.start()
    yield web
    web.kill()


def test_sockets_beyond_the_cap_are_refused_and_ingest_still_answers(
    settings, small_web, ingest_headers
):
    url = f"ws://127.0.0.1:{small_web.port}/ws/live?precision=5&token="
    token = mint_token(settings, "viewer")
    held = []
    try:
        for _ in range(4):  # 6 threads - 2 kept for HTTP
            ws = websocket.create_connection(url + token, timeout=5)
            assert json.loads(ws.recv())["type"] == "frame"
            held.append(ws)
        for _ in range(3):
            extra = websocket.create_connection(url + token, timeout=5)
            refusal = json.loads(extra.recv())
            assert refusal["type"] == "error" and refusal["error"] == "server_busy"
            assert "4 sockets" in refusal["message"]
            opcode, data = extra.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(data[:2], "big") == 1013  # RFC 6455: try again later
            extra.close()

        # ingest and the API still get threads while the viewers hold theirs
        body = [{"driver_id": "cap-1", "lat": 6.5, "lon": 3.37, "ts": int(time.time() * 1000)}]
        posted = requests.post(
            f"{small_web.http}/api/pings", json=body, headers=ingest_headers, timeout=10
        )
        assert posted.status_code == 202, posted.text
        assert requests.get(f"{small_web.http}/healthz", timeout=10).status_code == 200

        # a viewer leaves: the next socket is served
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            ws = websocket.create_connection(url + token, timeout=5)
            message = json.loads(ws.recv())
            if message["type"] == "frame":
                held.append(ws)
                break
            ws.close()
            assert time.monotonic() < deadline, "the freed thread never served a socket"
            time.sleep(0.1)
    finally:
        for ws in held:
            ws.close()
