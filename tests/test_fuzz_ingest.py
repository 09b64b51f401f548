"""Fuzzing POST /api/pings with generated bad requests: never a 5xx, every error a JSON
body with `error`, and nothing reaches the topic for a rejected request (the topic ends
up holding exactly the pings of the 202 answers, which are rare here).

CI runs a fixed-seed sample (FUZZ_EXAMPLES, default 400); the soak mode is
`FUZZ_EXAMPLES=10000 pytest tests/test_fuzz_ingest.py` or bench/soak_faults.py --fuzz.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import read_topic

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))

VALID = {"driver_id": "drv-1", "lat": 6.5, "lon": 3.4, "ts": 1_763_658_201_512}
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bad_field_values = {
    "driver_id": st.sampled_from(["", "x" * 65, "drv 1", "drv/1", "é", None, 5, [], {}])
    | st.text(alphabet="!@#$%^&*()+= /\\\"'<>é\x00", min_size=1, max_size=10),
    "lat": st.sampled_from([90.0001, -90.5, 1e308, "6.5", None, True, [], "NaN"])
    | st.floats(min_value=90, exclude_min=True)
    | st.floats(max_value=-90, exclude_max=True),
    "lon": st.sampled_from([180.5, -181, "3.4", None, False, {}])
    | st.floats(min_value=180, exclude_min=True),
    "ts": st.sampled_from(
        [
            "yesterday",
            "2026-13-40T00:00:00Z",
            "2026-11-20T17:03:21",
            -1,
            1.5,
            True,
            [],
            253_402_300_800_000,
            "4000-01-01T00:00:00+00:00",
        ]
    ),
    "speed_kmh": st.sampled_from([-0.1, "fast", [], True]) | st.floats(max_value=-1e-9),
    "heading": st.sampled_from([360, 360.0, -1, "north", {}]),
}


@st.composite
def bad_ping(draw: Any) -> dict[str, Any]:
    ping = dict(VALID)
    kind = draw(st.sampled_from(["field", "missing", "unknown"]))
    if kind == "field":
        name = draw(st.sampled_from(sorted(bad_field_values)))
        ping[name] = draw(bad_field_values[name])
    elif kind == "missing":
        del ping[draw(st.sampled_from(["driver_id", "lat", "lon"]))]
    else:
        ping[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in VALID))] = 1
    return ping


def _dump(value: Any) -> str:
    # non-finite floats are not JSON; send them the way a sloppy client would
    return json.dumps(value, allow_nan=True)


@st.composite
def bad_request(draw: Any) -> tuple[bytes, str, bool]:
    """(body, content type, with a valid token)."""
    kind = draw(
        st.sampled_from(["bytes", "json", "ping", "array", "wrapped", "ndjson", "auth", "ctype"])
    )
    auth = True
    ctype = "application/json"
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "json":
        body = _dump(draw(json_values)).encode()
    elif kind == "ping":
        body = _dump(draw(bad_ping())).encode()
    elif kind == "array":
        items = [*draw(st.lists(st.just(VALID), max_size=5)), draw(bad_ping())]
        body = _dump(draw(st.permutations(items))).encode()
    elif kind == "wrapped":
        extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
        body = _dump({"pings": [draw(bad_ping())], **extra}).encode()
    elif kind == "ndjson":
        lines = [_dump(VALID), _dump(draw(bad_ping())), draw(st.text(max_size=30))]
        body = "\n".join(draw(st.permutations(lines))).encode()
        ctype = "application/x-ndjson"
    elif kind == "auth":
        body = _dump(VALID).encode()
        auth = False
    else:
        body = draw(st.binary(max_size=50))
        ctype = draw(
            st.sampled_from(["text/plain", "application/x-ndjson", "", "multipart/form-data"])
        )
    return body, ctype, auth


def test_fuzzed_bad_requests_never_5xx_and_produce_nothing(client, ingest_headers, settings):
    statuses: Counter[int] = Counter()
    accepted = 0

    @seed(20261120)
    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=EXAMPLES <= 1000,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(bad_request())
    def one(req: tuple[bytes, str, bool]) -> None:
        nonlocal accepted
        body, ctype, auth = req
        headers = {"Content-Type": ctype} if ctype else {}
        if auth:
            headers["Authorization"] = ingest_headers["Authorization"]
        else:
            headers["Authorization"] = "Bearer not.a.jwt"
        r = client.post("/api/pings", data=body, headers=headers)
        statuses[r.status_code] += 1
        assert r.status_code < 500, (r.status_code, body[:200], r.get_data()[:300])
        if r.status_code == 202:
            accepted += r.get_json()["accepted"]
            return
        payload = r.get_json(silent=True)
        assert isinstance(payload, dict) and payload.get("error"), r.get_data()[:300]

    one()
    total = sum(statuses.values())
    print(f"fuzz: {total} requests, statuses {dict(sorted(statuses.items()))}, accepted {accepted}")
    assert total >= EXAMPLES * 0.9
    assert statuses[202] <= total * 0.02  # the generator really makes bad requests
    assert len(read_topic(settings, settings.topic_pings, timeout=10)) == accepted


def test_oversized_bodies_are_413_and_produce_nothing(client, ingest_headers, settings):
    many = [dict(VALID, driver_id=f"d{i}") for i in range(settings.max_pings_per_request + 1)]
    r = client.post("/api/pings", json=many, headers=ingest_headers)
    assert r.status_code == 413 and r.get_json()["error"]
    huge = b"[" + b" " * (settings.max_body_bytes + 10) + b"]"
    r = client.post(
        "/api/pings", data=huge, headers={**ingest_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.get_json()["error"]
    assert read_topic(settings, settings.topic_pings, timeout=5) == []
