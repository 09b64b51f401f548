"""Every abuse limit hit once, on every endpoint that has it, with the limit set small:
one step over it is refused (4xx JSON, or a socket error message), the limit itself is
served. Endpoints whose module does not exist yet are skipped with its name and are
covered as soon as it is registered (probes are matched against the app's url_map)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis

from app import create_app
from app.auth import mint_token
from app.limits import SocketSlots
from app.settings import Settings
from tests.conftest import wait_until
from tests.test_auth import close_quietly, connect, receive, refusal, serving

ROOT = Path(__file__).resolve().parent.parent
TIGHT = {
    "max_pings_per_request": 3,
    "max_body_bytes": 2048,
    "max_bbox_area_deg2": 1.0,
    "max_range_s": 3600,
    "export_max_rows": 2,
    "max_sockets_per_token": 2,
    "ws_max_messages_per_s": 0.5,  # bursts of 1, then one every 2 s
    "max_polygon_vertices": 5,
}
T0 = (int(time.time()) // 3600 - 3) * 3_600_000  # an hour boundary three hours ago
HOUR = 3_600_000


@pytest.fixture
def tight(settings: Settings) -> Iterator[tuple[Settings, Any]]:
    s = settings.with_(**TIGHT)
    application = create_app(s)
    yield s, application
    application.extensions["heatreplay"].close()


def served(application: Any, method: str, path: str) -> bool:
    return any(
        r.rule == path and method in (r.methods or ()) for r in application.url_map.iter_rules()
    )


def require(application: Any, method: str, path: str, module: str) -> None:
    if not served(application, method, path):
        pytest.skip(f"{module} does not exist yet: {method} {path} is not served")


# ---------------------------------------------------------------- HTTP limits


def pings(n: int) -> list[dict[str, Any]]:
    return [{"driver_id": f"d{i}", "lat": 6.5, "lon": 3.4} for i in range(n)]


def square(w: float, s: float, size: float) -> dict[str, Any]:
    ring = [[w, s], [w + size, s], [w + size, s + size], [w, s + size], [w, s]]
    return {"type": "Polygon", "coordinates": [ring]}


def pentagon() -> dict[str, Any]:
    ring = [[0, 0], [0.5, 0], [0.6, 0.3], [0.3, 0.5], [0, 0.3], [0, 0]]
    return {"type": "Polygon", "coordinates": [ring]}


@dataclass(frozen=True)
class Probe:
    """One limit on one endpoint: ``over`` goes one step past it, ``within`` sits on it."""

    setting: str
    module: str
    method: str
    path: str
    over: dict[str, Any]
    within: dict[str, Any]
    status: frozenset[int] = frozenset({400, 413, 422})
    role: str = "viewer"
    extra: dict[str, Any] = field(default_factory=dict)


RANGE_OVER = {"from": T0, "to": T0 + HOUR + 1000}
RANGE_OK = {"from": T0, "to": T0 + HOUR}
BOX = "3.0,6.0,4.0,7.0"  # exactly 1 square degree
BIG = "3.0,6.0,5.0,7.0"  # 2 square degrees
PROBES = {
    "body_bytes/pings": Probe(
        "MAX_BODY_BYTES",
        "app.ingest",
        "POST",
        "/api/pings",
        {"data": json.dumps(pings(1)) + " " * 2048},
        {"data": json.dumps(pings(1)).ljust(2048)},
        frozenset({413}),
        role="ingest",
    ),
    "batch_length/pings": Probe(
        "MAX_PINGS_PER_REQUEST",
        "app.ingest",
        "POST",
        "/api/pings",
        {"data": json.dumps(pings(4))},
        {"data": json.dumps(pings(3))},
        frozenset({413}),
        role="ingest",
    ),
    "precision/live": Probe(
        "precision 1-8",
        "app.live_api",
        "GET",
        "/api/live",
        {"query": {"precision": 9}},
        {"query": {"precision": 8, "bbox": BOX}},
        frozenset({400}),
    ),
    "precision/replay_frame": Probe(
        "precision 1-8",
        "app.replay_api",
        "GET",
        "/api/replay/frame",
        {"query": {"t": T0, "precision": 9}},
        {"query": {"t": T0, "precision": 8, "bbox": BOX}},
        frozenset({400}),
    ),
    "precision/top_cells": Probe(
        "precision 1-8",
        "app.analytics_api",
        "GET",
        "/api/analytics/top-cells",
        {"query": {**RANGE_OK, "precision": 9}},
        {"query": {**RANGE_OK, "precision": 8}},
        frozenset({400}),
    ),
    "bbox_area/replay_frame": Probe(
        "MAX_BBOX_AREA_DEG2",
        "app.replay_api",
        "GET",
        "/api/replay/frame",
        {"query": {"t": T0, "bbox": BIG}},
        {"query": {"t": T0, "bbox": BOX}},
    ),
    "bbox_area/top_cells": Probe(
        "MAX_BBOX_AREA_DEG2",
        "app.analytics_api",
        "GET",
        "/api/analytics/top-cells",
        {"query": {**RANGE_OK, "bbox": BIG}},
        {"query": {**RANGE_OK, "bbox": BOX}},
    ),
    "bbox_area/activity": Probe(
        "MAX_BBOX_AREA_DEG2",
        "app.analytics_api",
        "GET",
        "/api/analytics/activity",
        {"query": {**RANGE_OK, "bbox": BIG}},
        {"query": {**RANGE_OK, "bbox": BOX}},
    ),
    "bbox_area/export": Probe(
        "MAX_BBOX_AREA_DEG2",
        "app.analytics_api",
        "GET",
        "/api/analytics/export",
        {"query": {**RANGE_OK, "bbox": BIG}},
        {"query": {**RANGE_OK, "bbox": BOX}},
    ),
    "range/timeline": Probe(
        "MAX_RANGE_S",
        "app.replay_api",
        "GET",
        "/api/timeline",
        {"query": {**RANGE_OVER, "step": 60}},
        {"query": {**RANGE_OK, "step": 60}},
    ),
    "range/peaks": Probe(
        "MAX_RANGE_S",
        "app.replay_api",
        "GET",
        "/api/peaks",
        {"query": {**RANGE_OVER, "window": 600}},
        {"query": {**RANGE_OK, "window": 600}},
    ),
    "range/activity": Probe(
        "MAX_RANGE_S",
        "app.analytics_api",
        "GET",
        "/api/analytics/activity",
        {"query": {**RANGE_OVER, "bbox": BOX}},
        {"query": {**RANGE_OK, "bbox": BOX}},
    ),
    "range/top_cells": Probe(
        "MAX_RANGE_S",
        "app.analytics_api",
        "GET",
        "/api/analytics/top-cells",
        {"query": RANGE_OVER},
        {"query": RANGE_OK},
    ),
    "range/driver_path": Probe(
        "MAX_RANGE_S",
        "app.analytics_api",
        "GET",
        "/api/analytics/drivers/<driver_id>/path",
        {"query": RANGE_OVER},
        {"query": RANGE_OK},
        extra={"url": "/api/analytics/drivers/drv-1/path"},
    ),
    "range/export": Probe(
        "MAX_RANGE_S",
        "app.analytics_api",
        "GET",
        "/api/analytics/export",
        {"query": {**RANGE_OVER, "bbox": BOX}},
        {"query": {**RANGE_OK, "bbox": BOX}},
    ),
    "polygon_vertices/top_cells_query": Probe(
        "MAX_POLYGON_VERTICES",
        "app.analytics_api",
        "GET",
        "/api/analytics/top-cells",
        {"query": {**RANGE_OK, "polygon": json.dumps(pentagon())}},
        {"query": {**RANGE_OK, "polygon": json.dumps(square(0, 0, 0.5))}},
    ),
    "polygon_vertices/activity_body": Probe(
        "MAX_POLYGON_VERTICES",
        "app.analytics_api",
        "POST",
        "/api/analytics/activity",
        {"query": RANGE_OK, "data": json.dumps(pentagon())},
        {"query": RANGE_OK, "data": json.dumps(square(0, 0, 0.5))},
    ),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_limit_refuses_one_step_over_and_serves_the_limit(name, tight):
    s, application = tight
    probe = PROBES[name]
    require(application, probe.method, probe.path, probe.module)
    client = application.test_client()
    url = probe.extra.get("url", probe.path)
    headers = {"Authorization": f"Bearer {mint_token(s, probe.role)}"}

    def call(spec: dict[str, Any]) -> Any:
        return client.open(
            url,
            method=probe.method,
            query_string=spec.get("query"),
            data=spec.get("data"),
            headers={**headers, "Content-Type": "application/json"},
        )

    over, within = call(probe.over), call(probe.within)
    assert over.status_code in probe.status, (over.status_code, over.data[:300])
    assert over.is_json and isinstance(over.get_json()["error"], str)
    assert over.get_json()["message"]
    assert within.status_code in (200, 202), (within.status_code, within.data[:300])


def test_export_stops_at_export_max_rows_and_says_so(tight, db):
    s, application = tight
    require(application, "GET", "/api/analytics/export", "app.analytics_api")
    db.execute("SELECT heatreplay_ensure_day_partition((to_timestamp(%s / 1000.0))::date)", [T0])
    for i in range(3):
        db.execute(
            "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
            "(to_timestamp(%s / 1000.0), %s, ST_SetSRID(ST_MakePoint(3.5, 6.5), 4326), 's1')",
            [T0 + i * 1000, f"x{i}"],
        )
    client = application.test_client()
    headers = {"Authorization": f"Bearer {mint_token(s, 'viewer')}"}

    def export(start_ms: int) -> Any:
        query = {"from": start_ms, "to": T0 + 3000, "bbox": BOX, "format": "csv"}
        return client.get("/api/analytics/export", query_string=query, headers=headers)

    capped, exact = export(T0), export(T0 + 1000)
    assert capped.headers["X-Export-Max-Rows"] == "2"
    lines = capped.get_data(as_text=True).splitlines()
    assert [line.split(",")[1] for line in lines[1:3]] == ["x0", "x1"]
    assert len(lines) == 4 and lines[3].startswith("# truncated: export stopped at")
    rows = exact.get_data(as_text=True).splitlines()
    assert [line.split(",")[1] for line in rows[1:]] == ["x1", "x2"]


# ---------------------------------------------------------------- socket limits


def collect(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """Every message for ``seconds`` (the socket's timeout is shortened meanwhile)."""
    import websocket

    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            out.append(receive(ws))
        except websocket.WebSocketTimeoutException:
            break
    ws.settimeout(5)
    return out


SOCKET_CONTROL = {
    "/ws/live": ("app.live_api", {"op": "view", "precision": 5}),
    "/ws/replay": ("app.replay_api", {"op": "pause"}),
}


@pytest.mark.parametrize("path", list(SOCKET_CONTROL))
def test_control_messages_over_the_rate_get_an_error_and_the_socket_goes_on(path, tight):
    s, application = tight
    module, message = SOCKET_CONTROL[path]
    require(application, "GET", path, module)
    with serving(application) as address:
        ws = connect(address, path, mint_token(s, "viewer"))
        collect(ws, 0.3)
        for _ in range(4):  # a burst of one is allowed, then one per 2 s
            ws.send(json.dumps(message))
        got = collect(ws, 1.0)
        limited = [m for m in got if m.get("error") == "rate_limited"]
        assert len(limited) == 3, got
        assert all(m["type"] == "error" and m["message"] for m in limited)
        assert not [m for m in got if m["type"] == "close"]
        time.sleep(2.1)  # the bucket refills: the next message is served again
        ws.send(json.dumps(message))
        assert not [m for m in collect(ws, 0.5) if m.get("error") == "rate_limited"]
        close_quietly(ws)


SOCKET_PARAMS = {
    "precision/live": ("app.live_api", "/ws/live", {"precision": 9}),
    "precision/replay": ("app.replay_api", "/ws/replay", {"precision": 9}),
    "bbox_area/replay": ("app.replay_api", "/ws/replay", {"bbox": BIG}),
    "range/replay": ("app.replay_api", "/ws/replay", {"to": T0 + HOUR + 1000}),
}


@pytest.mark.parametrize("name", list(SOCKET_PARAMS))
def test_socket_parameters_over_a_limit_get_an_error_and_close(name, tight):
    s, application = tight
    module, path, params = SOCKET_PARAMS[name]
    require(application, "GET", path, module)
    base = {"from": T0, "to": T0 + 60_000} if path == "/ws/replay" else {}
    with serving(application) as address:
        ws = connect(address, path, mint_token(s, "viewer"), **{**base, **params})
        error, message, code = refusal(ws, reason_is_message=False)
        close_quietly(ws)
        assert (error, code) == ("invalid_parameter", 1008) and message
        ok = connect(address, path, mint_token(s, "viewer"), **base)
        first = receive(ok)
        close_quietly(ok)
        assert first["type"] == "frame", first


def test_sockets_per_token_across_the_limit(tight):
    s, application = tight
    a, b = mint_token(s, "viewer"), mint_token(s, "viewer")
    client = redis.Redis.from_url(s.redis_url)
    slots = SocketSlots(client, s.redis_key_prefix, s.max_sockets_per_token)
    jti_a = jwt.decode(a, options={"verify_signature": False})["jti"]
    try:
        with serving(application) as address:
            first, second = connect(address, "/ws/live", a), connect(address, "/ws/live", a)
            assert [receive(first)["type"], receive(second)["type"]] == ["frame", "frame"]
            assert slots.open_count(jti_a) == 2
            third = connect(address, "/ws/live", a)
            error, message, code = refusal(third)
            close_quietly(third)
            assert (error, code) == ("too_many_sockets", 4429)
            assert message == "this token already has 2 open sockets (limit 2)"
            other = connect(address, "/ws/live", b)  # another token has its own slots
            assert receive(other)["type"] == "frame"
            close_quietly(first)
            wait_until(lambda: slots.open_count(jti_a) == 1, timeout=10)
            again = connect(address, "/ws/live", a)
            assert receive(again)["type"] == "frame"
            for ws in (second, other, again):
                close_quietly(ws)
            wait_until(lambda: slots.open_count(jti_a) == 0, timeout=10)
    finally:
        client.delete(slots.key(jti_a))
        client.close()


CRASHING_PROCESS = """
import sys, time, redis
from app.limits import SocketSlots
slots = SocketSlots(redis.Redis.from_url(sys.argv[1]), sys.argv[2], 2, lease_s=1.0)
slots.acquire(sys.argv[3]); slots.acquire(sys.argv[3])
print("holding", flush=True)
time.sleep(600)
"""


def test_slots_of_a_crashed_process_free_themselves_after_the_lease(settings):
    """A web process killed with SIGKILL never releases its slots; its leases lapse."""
    client = redis.Redis.from_url(settings.redis_url)
    tid = "crash-" + uuid.uuid4().hex[:8]
    slots = SocketSlots(client, settings.redis_key_prefix, 2, lease_s=1.0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CRASHING_PROCESS,
            settings.redis_url,
            settings.redis_key_prefix,
            tid,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"holding\n"
        # alive: its keeper renews the 1 s leases, so the slots stay taken past the lease
        time.sleep(2.5)
        assert slots.open_count(tid) == 2
        with pytest.raises(Exception, match="already has 2 open sockets"):
            slots.acquire(tid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        wait_until(lambda: slots.open_count(tid) == 0, timeout=5, interval=0.05)
        assert time.monotonic() - killed <= 1.5
        slot = slots.acquire(tid)
        assert slots.open_count(tid) == 1
        slots.release(slot)
        assert slots.open_count(tid) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.delete(slots.key(tid))
        client.close()


def test_socket_limit_lets_sockets_through_when_redis_is_down(settings):
    """Abuse accounting must not turn a Redis outage into refused viewers."""
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    slots = SocketSlots(dead, settings.redis_key_prefix, 1)
    first, second = slots.acquire("t"), slots.acquire("t")
    assert (first.counted, second.counted) == (False, False)
    slots.release(first)  # nothing to release, and no error
