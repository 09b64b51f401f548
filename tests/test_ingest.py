"""POST /api/pings against a real broker: every SPEC case, and that rejected requests
produce nothing."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app import create_app
from app.auth import mint_token
from app.ping import PingIn, bad_driver_ids
from app.settings import Settings
from tests.conftest import free_port, read_topic


def ping(driver: str = "drv-0001", **extra: Any) -> dict[str, Any]:
    return {"driver_id": driver, "lat": 6.5244, "lon": 3.3792, **extra}


def post(
    client: Any, headers: dict[str, str], body: Any, content_type: str = "application/json"
) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post("/api/pings", data=data, headers={**headers, "Content-Type": content_type})


def test_every_body_form_is_accepted_and_keyed_by_driver(client, ingest_headers, settings):
    now_ms = int(time.time() * 1000)
    iso = "2026-11-20T17:03:21.512Z"
    r1 = post(client, ingest_headers, ping("a", ts=iso, speed_kmh=31.5, heading=270))
    r2 = post(client, ingest_headers, [ping("b", ts=1_763_658_201_512), ping("c")])
    r3 = post(client, ingest_headers, {"pings": [ping("d", heading=0)]})
    nd = "\n".join(json.dumps(p) for p in [ping("e"), ping("f", lat=-90, lon=180)]) + "\n\n"
    r4 = post(client, ingest_headers, nd, "application/x-ndjson")
    assert [r.status_code for r in (r1, r2, r3, r4)] == [202] * 4
    assert [r.get_json() for r in (r1, r2, r3, r4)] == [
        {"accepted": 1},
        {"accepted": 2},
        {"accepted": 1},
        {"accepted": 2},
    ]
    messages = read_topic(settings, settings.topic_pings)
    by_key = {m.key().decode(): json.loads(m.value()) for m in messages}
    assert sorted(by_key) == ["a", "b", "c", "d", "e", "f"]
    assert by_key["a"] == {
        "driver_id": "a",
        "lat": 6.5244,
        "lon": 3.3792,
        "ts": 1_795_194_201_512,
        "speed_kmh": 31.5,
        "heading": 270.0,
    }
    assert by_key["b"]["ts"] == 1_763_658_201_512
    # a missing ts means "now" on the server clock
    assert now_ms - 1000 <= by_key["c"]["ts"] <= int(time.time() * 1000)
    assert by_key["f"]["lat"] == -90.0 and by_key["f"]["lon"] == 180.0
    # per-driver order: one driver always lands in the same partition
    assert len(messages) == 6


BAD_PINGS = [
    (ping(lat=90.5), "lat"),
    (ping(lon=-180.01), "lon"),
    (ping(lat="6.5"), "lat"),
    ({"lat": 6.5, "lon": 3.3}, "driver_id"),
    (ping(driver=""), "driver_id"),
    (ping(driver="has space"), "driver_id"),
    (ping(driver="x" * 65), "driver_id"),
    (ping(speed_kmh=-1), "speed_kmh"),
    (ping(speed_kmh=1e39), "speed_kmh"),  # finite, but no PostgreSQL real holds it
    (ping(heading=360), "heading"),
    (ping(heading=-0.5), "heading"),
    (ping(ts="2026-11-20T17:03:21"), "ts"),
    (ping(ts="yesterday"), "ts"),
    (ping(ts="1960-01-01T00:00:00Z"), "ts"),  # epoch ms on the wire: none before 1970
    (ping(ts=-1), "ts"),
    (ping(ts="SIX_MINUTES_AHEAD"), "ts"),  # resolved when the test runs, not at collection
    (ping(colour="red"), "colour"),
    (ping(lat=None), "lat"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_PINGS)
def test_invalid_ping_is_422_with_index_and_field(client, ingest_headers, bad, field):
    if bad.get("ts") == "SIX_MINUTES_AHEAD":
        bad = {**bad, "ts": int(time.time() * 1000) + 6 * 60_000}
    r = post(client, ingest_headers, [ping("ok-1"), bad, ping("ok-2")])
    assert r.status_code == 422
    body = r.get_json()
    assert body["error"] == "invalid_ping"
    assert [(d["index"], d["field"]) for d in body["details"]] == [(1, field)]
    assert body["details"][0]["message"]


def test_rejections_produce_nothing(client, ingest_headers, settings):
    cases = [
        post(client, ingest_headers, [ping("a"), ping("b", lat=100), ping("c", colour=1)]),
        post(client, ingest_headers, b"{not json"),
        post(client, ingest_headers, b'[{"driver_id": "a", "lat": 1, "lon": 2},'),
        post(
            client,
            ingest_headers,
            b'{"driver_id":"a","lat":1,"lon":2}\nnope\n',
            "application/x-ndjson",
        ),
        post(client, ingest_headers, [ping(f"d{i}") for i in range(10_001)]),
        post(client, ingest_headers, b"[" + b" " * (4 * 1024 * 1024) + b"]"),
        post(client, ingest_headers, []),
        post(client, ingest_headers, {"pings": [ping("a")], "extra": 1}),
        post(client, {}, [ping("a")]),
        post(client, {"Authorization": "Bearer " + mint_token(settings, "viewer")}, [ping("a")]),
        post(client, {"Authorization": "Bearer not-a-jwt"}, [ping("a")]),
        # several values on one NDJSON line: not NDJSON (and not counted against the limit)
        post(
            client,
            ingest_headers,
            b"\n".join([b",".join([json.dumps(ping("a")).encode()] * 3)] * 2),
            "application/x-ndjson",
        ),
        post(client, ingest_headers, b"[" * 100_000 + b"]" * 100_000),  # nested too deeply
        post(client, ingest_headers, b'{"pings": ' + b"[" * 100_000),
        post(client, ingest_headers, b"[" * 100_000, "application/x-ndjson"),
    ]
    assert [r.status_code for r in cases] == [
        *(422, 400, 400, 400, 413, 413, 422, 422, 401, 403, 401),
        *(400, 400, 400, 400),
    ]
    for r in cases:
        assert r.is_json and isinstance(r.get_json()["error"], str)
    assert cases[0].get_json()["details"] == [
        {"index": 1, "field": "lat", "message": "Expected `float` <= 90.0"},
        {"index": 2, "field": "colour", "message": "Object contains unknown field `colour`"},
    ]
    assert cases[4].get_json()["error"] == "payload_too_large"
    assert cases[5].get_json()["error"] == "request_entity_too_large"
    assert [r.get_json()["error"] for r in cases[11:]] == ["malformed_json"] * 4
    assert "line 1: " in cases[11].get_json()["message"]
    assert "nested too deeply" in cases[12].get_json()["message"]
    # one good request afterwards: the topic holds exactly its ping and nothing else
    assert post(client, ingest_headers, ping("only")).status_code == 202
    assert [m.key() for m in read_topic(settings, settings.topic_pings)] == [b"only"]


def test_ndjson_counts_pings_not_lines(client, ingest_headers, settings):
    """The 10,000 limit holds for NDJSON however the pings are laid out on lines."""
    line = json.dumps(ping("a")).encode()
    over = b"\n".join([b",".join([line] * 2)] * 5_001)  # 10,002 pings on 5,001 lines
    r = post(client, ingest_headers, over, "application/x-ndjson")
    assert r.status_code in (400, 413), r.get_json()
    assert read_topic(settings, settings.topic_pings) == []


def test_ten_thousand_pings_is_the_limit(client, ingest_headers, settings):
    body = msgspec.json.encode(
        [ping(f"drv-{i % 500}", ts=1_763_658_000_000 + i) for i in range(10_000)]
    )
    r = post(client, ingest_headers, body)
    assert r.status_code == 202 and r.get_json() == {"accepted": 10_000}
    assert len(read_topic(settings, settings.topic_pings)) == 10_000


def test_broker_unavailable_is_503_with_retry_after(settings: Settings):
    dead = settings.with_(kafka_bootstrap=f"127.0.0.1:{free_port()}", produce_timeout_s=1.0)
    app = create_app(dead)
    try:
        headers = {"Authorization": f"Bearer {mint_token(dead, 'ingest')}"}
        r = post(app.test_client(), headers, [ping("a")])
        assert r.status_code == 503
        assert r.get_json()["error"] == "unavailable"
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        app.extensions["heatreplay"].close()


@hsettings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet="aZ09._:-\n é\x00", max_size=66)
        | st.text(alphabet="ab", min_size=63, max_size=66),
        max_size=30,
    )
)
def test_driver_ids_checked_in_bulk_flag_exactly_the_bad_ones(ids):
    """The one-pass check over the joined ids agrees with the SPEC rule applied to each
    id, also for ids holding the join's own separator."""
    pings = [PingIn(d, 6.5, 3.4) for d in ids]
    rule = re.compile(r"[A-Za-z0-9._:-]{1,64}")
    assert bad_driver_ids(pings) == [i for i, d in enumerate(ids) if not rule.fullmatch(d)]


def test_an_id_holding_a_newline_is_422(client, ingest_headers):
    r = post(client, ingest_headers, [ping("ok-1"), ping(driver="a\nb"), ping("ok-2")])
    assert r.status_code == 422
    assert [(d["index"], d["field"]) for d in r.get_json()["details"]] == [(1, "driver_id")]
