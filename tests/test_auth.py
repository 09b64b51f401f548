"""Auth on every route and socket the app actually serves (read from its url_map, so a
route added later is covered without touching this file): no token, a bad signature, an
expired token and the wrong role are refused with JSON bodies (401/401/401/403, sockets:
an error message then close 4401/4403); the right role gets through. Sockets are driven
over a real HTTP server with a real WebSocket client."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import jwt
import pytest
import websocket
from werkzeug.serving import make_server

import app.ws as app_ws
from app import WS_MAX_MESSAGE_BYTES, create_app
from app.auth import ROLES, check_token, mint_token
from app.errors import Forbidden, Unauthorized
from app.settings import Settings
from tests.conftest import free_port

OTHER_SECRET = "not-the-service-secret-0123456789"
AUTH_ERRORS = {"unauthorized", "forbidden"}


# ---------------------------------------------------------------- tokens and helpers


def signed(settings: Settings, secret: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "t", "iat": now, "exp": now + 600, "jti": "j-" + str(now)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret or settings.secret, algorithm="HS256")


def bad_tokens(settings: Settings, role: str) -> dict[str, str | None]:
    """The refused variants of a token for ``role``, keyed by what is wrong with them."""
    wrong = next(r for r in ROLES if r != role)
    now = int(time.time())
    return {
        "missing": None,
        "bad_signature": signed(settings, OTHER_SECRET, role=role),
        "expired": signed(
            settings, role=role, iat=now - 7200, exp=now - settings.jwt_leeway_s - 60
        ),
        "wrong_role": mint_token(settings, wrong),
    }


EXPECTED_HTTP = {"missing": 401, "bad_signature": 401, "expired": 401, "wrong_role": 403}
EXPECTED_CLOSE = {"missing": 4401, "bad_signature": 4401, "expired": 4401, "wrong_role": 4403}


def required_role(path: str) -> str:
    """SPEC: ingest may post pings; viewer reads everything else under /api and /ws."""
    return "ingest" if path == "/api/pings" else "viewer"


def concrete(rule_path: str) -> str:
    """A URL for a rule: path variables filled with a plausible value."""
    return re.sub(
        r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>",
        lambda m: "1" if m.group(1) in {"int", "float"} else "x",
        rule_path,
    )


def api_routes(application: Any) -> list[tuple[str, str]]:
    out = []
    for rule in application.url_map.iter_rules():
        if rule.websocket or not rule.rule.startswith("/api/"):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule))
    return sorted(out)


def socket_routes(application: Any) -> list[str]:
    return sorted(r.rule for r in application.url_map.iter_rules() if r.websocket)


# ---------------------------------------------------------------- a real server


@contextmanager
def serving(application: Any) -> Iterator[str]:
    """The app under werkzeug's threaded server on a free port; yields host:port."""
    port = free_port()
    server = make_server("127.0.0.1", port, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def server(app: Any) -> Iterator[str]:
    with serving(app) as address:
        yield address


def socket_params(path: str) -> dict[str, Any]:
    """Valid query parameters for the sockets the SPEC defines (others get none)."""
    t0 = int(time.time() * 1000) - 3_600_000
    return {
        "/ws/live": {"precision": 5},
        "/ws/replay": {"from": t0, "to": t0 + 60_000, "step": 10, "speed": 60, "precision": 5},
    }.get(path, {})


def connect(address: str, path: str, token: str | None = None, **params: Any) -> Any:
    query = dict(socket_params(path), **params)
    if token is not None:
        query["token"] = token
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return websocket.create_connection(f"ws://{address}{path}?{qs}", timeout=5)


def receive(ws: Any) -> dict[str, Any]:
    """The next JSON message, or {"type": "close", "code": ..., "reason": ...}."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return json.loads(data)  # type: ignore[no-any-return]
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            return {"type": "close", "code": code, "reason": data[2:].decode()}


def refusal(ws: Any, reason_is_message: bool = True) -> tuple[str, str, int]:
    """(error, message, close code) of a socket the server refuses; app/ws.py's
    refusals repeat the message as the close reason for clients that only see the
    close event."""
    error = receive(ws)
    close = receive(ws)
    assert error["type"] == "error", error
    assert close["type"] == "close", close
    if reason_is_message:
        assert close["reason"] == error["message"][:123]
    return error["error"], error["message"], close["code"]


def close_quietly(ws: Any) -> None:
    with suppress(OSError, websocket.WebSocketException):
        ws.close()


# ---------------------------------------------------------------- tokens


def test_minted_tokens_carry_role_expiry_and_a_unique_id(settings):
    a, b = mint_token(settings, "viewer"), mint_token(settings, "viewer", ttl_s=60)
    ca, cb = (check_token(settings, t, "viewer") for t in (a, b))
    assert ca["exp"] - ca["iat"] == settings.token_ttl_s
    assert cb["exp"] - cb["iat"] == 60
    assert ca["jti"] != cb["jti"] and len(ca["jti"]) == 32
    with pytest.raises(ValueError, match="role must be one of viewer, ingest"):
        mint_token(settings, "admin")
    with pytest.raises(ValueError, match="lifetime must be positive"):
        mint_token(settings, "viewer", ttl_s=0)


def test_clock_skew_tolerance_is_jwt_leeway_s(settings):
    assert settings.jwt_leeway_s == 30
    now = int(time.time())
    # expired 10 s ago, or issued 10 s "in the future" by a fast clock: within the leeway
    assert check_token(settings, signed(settings, role="viewer", exp=now - 10), "viewer")
    assert check_token(settings, signed(settings, role="viewer", nbf=now + 10), "viewer")
    with pytest.raises(Unauthorized, match="token expired"):
        check_token(settings, signed(settings, role="viewer", exp=now - 45), "viewer")
    with pytest.raises(Unauthorized, match="not yet valid"):
        check_token(settings, signed(settings, role="viewer", nbf=now + 45), "viewer")
    strict = settings.with_(jwt_leeway_s=0)
    with pytest.raises(Unauthorized, match="token expired"):
        check_token(strict, signed(settings, role="viewer", exp=now - 10), "viewer")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_tokens_that_are_not_ours_are_refused(settings):
    now = int(time.time())
    unsigned = jwt.encode({"role": "viewer", "exp": now + 60}, None, algorithm="none")
    hs512 = jwt.encode({"role": "viewer", "exp": now + 60}, settings.secret, algorithm="HS512")
    cases = {
        "alg none": unsigned,
        "HS512": hs512,
        "no exp": signed(settings, role="viewer", exp=None),
        "no role": signed(settings),
        "garbage": "not.a.jwt",
    }
    for name, token in cases.items():
        with pytest.raises(Unauthorized):
            check_token(settings, token, "viewer")
            pytest.fail(f"{name} was accepted")
    with pytest.raises(Forbidden, match="this needs the 'viewer' role; the token has 'admin'"):
        check_token(settings, signed(settings, role="admin"), "viewer")


# ---------------------------------------------------------------- every HTTP route


def test_every_api_route_refuses_bad_tokens_and_admits_the_right_role(app, client, settings):
    routes = api_routes(app)
    # the routes the SPEC requires from this module's siblings are really being checked
    assert {("POST", "/api/pings"), ("GET", "/api/live")} <= set(routes)
    refused: dict[tuple[str, str], dict[str, int]] = {}
    admitted: dict[tuple[str, str], int] = {}
    for method, path in routes:
        url = concrete(path)
        role = required_role(path)
        body = b"[]" if method in {"POST", "PUT", "PATCH"} else None
        statuses = {}
        for case, token in bad_tokens(settings, role).items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = client.open(url, method=method, headers=headers, data=body)
            statuses[case] = r.status_code
            assert r.is_json, (method, path, case)
            assert r.get_json()["error"] == (
                "forbidden" if r.status_code == 403 else "unauthorized"
            )
            assert r.get_json()["message"]
            if r.status_code == 401:
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="heatreplay"'
        refused[(method, path)] = statuses
        good = {"Authorization": f"Bearer {mint_token(settings, role)}"}
        admitted[(method, path)] = client.open(
            url, method=method, headers=good, data=body
        ).status_code
    assert refused == {route: EXPECTED_HTTP for route in routes}
    assert {route: s for route, s in admitted.items() if s in (401, 403) or s >= 500} == {}


def test_healthz_is_open(client):
    r = client.get("/healthz")
    assert r.status_code in (200, 503) and r.get_json()["status"] in ("ok", "degraded")


def test_metrics_needs_a_viewer_token_when_required(settings):
    guarded = create_app(settings.with_(metrics_token_required=True))
    open_ = create_app(settings.with_(metrics_token_required=False))
    try:
        c = guarded.test_client()
        statuses = {}
        for case, token in bad_tokens(settings, "viewer").items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            statuses[case] = c.get("/metrics", headers=headers).status_code
        assert statuses == EXPECTED_HTTP
        viewer = {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}
        ok = c.get("/metrics", headers=viewer)
        assert ok.status_code == 200 and b"heatreplay_pings_accepted" in ok.data
        assert open_.test_client().get("/metrics").status_code == 200
    finally:
        guarded.extensions["heatreplay"].close()
        open_.extensions["heatreplay"].close()


# ---------------------------------------------------------------- every socket


def test_every_socket_refuses_bad_tokens_with_a_message_and_close_code(app, server, settings):
    paths = socket_routes(app)
    assert "/ws/live" in paths
    seen: dict[str, dict[str, tuple[str, int]]] = {}
    for path in paths:
        seen[path] = {}
        for case, token in bad_tokens(settings, "viewer").items():
            if token is None:
                ws = connect(server, path)
                ws.send(json.dumps({"op": "view", "precision": 5}))  # a first message, no token
            else:
                ws = connect(server, path, token)
            error, message, code = refusal(ws)
            close_quietly(ws)
            assert message
            seen[path][case] = (error, code)
    expected = {
        "missing": ("unauthorized", 4401),
        "bad_signature": ("unauthorized", 4401),
        "expired": ("unauthorized", 4401),
        "wrong_role": ("forbidden", 4403),
    }
    assert seen == {path: expected for path in paths}


def test_every_socket_admits_a_viewer_token_in_the_query_or_the_first_message(
    app, server, settings
):
    paths = socket_routes(app)
    token = mint_token(settings, "viewer")
    firsts: dict[tuple[str, str], Any] = {}
    for path in paths:
        for how in ("query", "bare first message", "auth first message"):
            ws = connect(server, path, token if how == "query" else None)
            if how == "bare first message":
                ws.send(token)
            elif how == "auth first message":
                ws.send(json.dumps({"op": "auth", "token": token}))
            try:
                first = receive(ws)
            except websocket.WebSocketTimeoutException:
                first = "quiet"  # admitted and waiting; a refusal is always immediate
            close_quietly(ws)
            firsts[(path, how)] = first
    refused = {
        k: v
        for k, v in firsts.items()
        if isinstance(v, dict) and (v.get("type") == "close" or v.get("error") in AUTH_ERRORS)
    }
    assert refused == {}
    live = [
        firsts[("/ws/live", how)] for how in ("query", "bare first message", "auth first message")
    ]
    assert [(m["type"], m["mode"], m["precision"]) for m in live] == [("frame", "live", 5)] * 3


def test_a_first_message_nested_too_deeply_or_too_large_is_refused_not_a_crash(app, server):
    for path in socket_routes(app):
        ws = connect(server, path)
        ws.send('{"token": ' + "[" * 20_000)  # past the JSON parser's depth
        error, _message, code = refusal(ws)
        close_quietly(ws)
        assert (error, code) == ("unauthorized", 4401), path
        ws = connect(server, path)  # more than any control message: closed unread
        ws.send("x" * (WS_MAX_MESSAGE_BYTES + 1))
        opcode, data = ws.recv_data(control_frame=True)
        close_quietly(ws)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1009, path  # message too big


def test_a_socket_that_sends_no_token_in_time_is_closed_4401(app, server, monkeypatch):
    monkeypatch.setattr(app_ws, "AUTH_TIMEOUT_S", 0.5)
    ws = connect(server, "/ws/live")
    started = time.monotonic()
    error, message, code = refusal(ws)
    close_quietly(ws)
    assert (error, message, code) == ("unauthorized", "missing bearer token", 4401)
    assert time.monotonic() - started < 3


def test_expired_token_socket_and_http_error_bodies_say_why(client, server, settings):
    expired = bad_tokens(settings, "viewer")["expired"]
    r = client.get("/api/live", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401
    assert r.get_json() == {"error": "unauthorized", "message": "token expired"}
    ws = connect(server, "/ws/live", expired)
    assert refusal(ws) == ("unauthorized", "token expired", 4401)
    close_quietly(ws)
    ws = connect(server, "/ws/live", mint_token(settings, "ingest"))
    assert refusal(ws) == (
        "forbidden",
        "this needs the 'viewer' role; the token has 'ingest'",
        4403,
    )
    close_quietly(ws)


@pytest.mark.parametrize("path", ["/ws/live", "/ws/replay"])
def test_an_open_socket_is_closed_4401_when_its_token_expires(settings, path):
    s = settings.with_(jwt_leeway_s=0)
    application = create_app(s)
    try:
        with serving(application) as address:
            token = mint_token(s, "viewer", ttl_s=2)
            expires = check_token(s, token, "viewer")["exp"]
            ws = connect(address, path, token)
            first = receive(ws)
            assert first["type"] in ("frame", "end"), first  # admitted while valid
            messages = [receive(ws)]
            while messages[-1]["type"] != "close":
                messages.append(receive(ws))
            closed_at = time.time()
            close_quietly(ws)
    finally:
        application.extensions["heatreplay"].close()
    error, close = messages[-2], messages[-1]
    assert error == {"type": "error", "error": "unauthorized", "message": "token expired"}
    assert (close["code"], close["reason"]) == (4401, "token expired")
    assert closed_at >= expires  # not before the token ran out
