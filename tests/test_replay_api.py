"""GET /api/timeline, /api/peaks and /api/replay/frame on constructed history: exact
peaks (ranking, ties, non-overlap), timeline sums equal to the rows, exact frames, and
4xx JSON for bad parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.ping import Ping
from tests.replay_support import ensure_days, ms, truncate, write_history

DAY = datetime(2026, 11, 20, tzinfo=UTC)
YABA = (6.5095, 3.3711)  # s14mh9nb
YABA3 = (6.5101, 3.3716)  # s14mh9ph
IKEJA = (6.6018, 3.3515)  # s14ms3b6


def at(hh: int, mm: int, ss: int = 0) -> int:
    return ms(DAY + timedelta(hours=hh, minutes=mm, seconds=ss))


def iso(hh: int, mm: int) -> str:
    return (DAY + timedelta(hours=hh, minutes=mm)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def history(settings, db):
    """00:00-06:00: 'a' 1 ping/min in [01:00, 02:00); 'b' and 'c' 1 ping/min each in
    [03:30, 04:30); 'd' 1 ping/min in [05:00, 06:00). Written late and out of order."""
    truncate(db)
    ensure_days(db, at(0, 0), at(6, 0))
    pings = [Ping("a", *YABA, at(1, m, 7)) for m in range(60)]
    pings += [Ping(d, *IKEJA, at(3, 30 + m, 30)) for m in range(60) for d in ("b", "c")]
    pings += [Ping("d", *YABA3, at(5, m, 59)) for m in range(60)]
    write_history(db, [pings[::2], pings[1::2][::-1]])
    return pings


def test_peaks_exact(history, client, viewer_headers):
    q = {"from": iso(0, 0), "to": iso(6, 0)}
    r = client.get("/api/peaks", query_string=q, headers=viewer_headers)
    assert r.status_code == 200
    assert r.get_json() == [
        {"start": iso(3, 30), "end": iso(4, 30), "pings": 120, "drivers": 2},
        # a tie at 60: the earlier start ranks first
        {"start": iso(1, 0), "end": iso(2, 0), "pings": 60, "drivers": 1},
        {"start": iso(5, 0), "end": iso(6, 0), "pings": 60, "drivers": 1},
    ]
    # windows without pings are not peaks
    r = client.get("/api/peaks", query_string={**q, "top": 5}, headers=viewer_headers)
    assert [p["start"] for p in r.get_json()] == [iso(3, 30), iso(1, 0), iso(5, 0)]
    # half-hour windows: the two halves of the busy hour tie, the earlier first
    r = client.get("/api/peaks", query_string={**q, "window": 1800}, headers=viewer_headers)
    assert r.get_json() == [
        {"start": iso(3, 30), "end": iso(4, 0), "pings": 60, "drivers": 2},
        {"start": iso(4, 0), "end": iso(4, 30), "pings": 60, "drivers": 2},
        {"start": iso(1, 0), "end": iso(1, 30), "pings": 30, "drivers": 1},
    ]
    # a range that cuts the busy hour: windows lie inside it (03:45-04:45 holds 45 min of it)
    r = client.get(
        "/api/peaks",
        query_string={"from": iso(3, 45), "to": str(at(6, 0)), "top": 1},
        headers=viewer_headers,
    )
    assert r.get_json() == [{"start": iso(3, 45), "end": iso(4, 45), "pings": 90, "drivers": 2}]


def test_timeline_sums_equal_rows(history, client, viewer_headers, db):
    q = {"from": iso(0, 0), "to": iso(6, 0)}
    r = client.get("/api/timeline", query_string=q, headers=viewer_headers)
    body = r.get_json()
    assert body["step"] == 60 and len(body["points"]) == 360
    assert body["points"][0] == [iso(0, 0), 0, 0]  # empty minutes are zeros
    assert body["points"][60] == [iso(1, 0), 1, 1]
    assert body["points"][210] == [iso(3, 30), 2, 2]
    rows = db.execute("SELECT count(*) FROM pings").fetchone()[0]
    assert sum(p[1] for p in body["points"]) == rows == len(history) == 240
    r = client.get("/api/timeline", query_string={**q, "step": 3600}, headers=viewer_headers)
    assert r.get_json() == {
        "step": 3600,
        "points": [
            [iso(0, 0), 0, 0],
            [iso(1, 0), 60, 1],
            [iso(2, 0), 0, 0],
            [iso(3, 0), 60, 2],
            [iso(4, 0), 60, 2],
            [iso(5, 0), 60, 1],
        ],
    }
    # buckets are aligned to the step, a range starting mid-bucket includes that bucket
    r = client.get(
        "/api/timeline",
        query_string={"from": iso(3, 59), "to": iso(4, 31), "step": 1800},
        headers=viewer_headers,
    )
    assert r.get_json()["points"] == [[iso(3, 30), 60, 2], [iso(4, 0), 60, 2], [iso(4, 30), 0, 0]]


def test_replay_frame_exact(history, client, viewer_headers, settings):
    # W = 10 s in tests: at 03:45:35 b and c (pinged 03:45:30) are in s14ms3b6;
    # at 01:10:10 'a' (01:10:07) is in s14mh9nb; at 01:10:18 'a' has gone quiet
    r = client.get(
        "/api/replay/frame",
        query_string={"t": "2026-11-20T03:45:35Z", "precision": 6},
        headers=viewer_headers,
    )
    assert r.get_json() == {
        "type": "frame",
        "mode": "replay",
        "t": "2026-11-20T03:45:35Z",
        "precision": 6,
        "cells": [["s14ms3", 2]],
        "total": 2,
        "max": 2,
    }
    r = client.get(
        "/api/replay/frame",
        query_string={"t": str(at(1, 10, 10)), "precision": 8, "bbox": "3.36,6.50,3.385,6.52"},
        headers=viewer_headers,
    )
    body = r.get_json()
    assert (body["cells"], body["bbox"]) == ([["s14mh9nb", 1]], [3.36, 6.5, 3.385, 6.52])
    r = client.get(
        "/api/replay/frame", query_string={"t": str(at(1, 10, 18))}, headers=viewer_headers
    )
    assert (r.get_json()["cells"], r.get_json()["t"]) == ([], "2026-11-20T01:10:18Z")


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/timeline", {"from": iso(2, 0), "to": iso(1, 0)}, "from"),
        ("/api/timeline", {"from": iso(1, 0), "to": iso(1, 0)}, "from"),
        ("/api/timeline", {"from": "yesterday", "to": iso(1, 0)}, "from"),
        ("/api/timeline", {"to": iso(1, 0)}, "from"),
        ("/api/timeline", {"from": "2026-01-01T00:00:00Z", "to": iso(1, 0)}, "to"),
        ("/api/timeline", {"from": iso(0, 0), "to": iso(1, 0), "step": 90}, "step"),
        ("/api/timeline", {"from": iso(0, 0), "to": iso(1, 0), "step": "x"}, "step"),
        ("/api/peaks", {"from": iso(0, 0), "to": iso(1, 0), "window": 30}, "window"),
        ("/api/peaks", {"from": iso(0, 0), "to": iso(1, 0), "window": 90}, "window"),
        ("/api/peaks", {"from": iso(0, 0), "to": iso(1, 0), "top": 0}, "top"),
        ("/api/replay/frame", {}, "t"),
        ("/api/replay/frame", {"t": iso(1, 0), "precision": 9}, "precision"),
        ("/api/replay/frame", {"t": iso(1, 0), "bbox": "-30,-30,30,30"}, "bbox"),
        ("/api/replay/frame", {"t": iso(1, 0), "bbox": "3,6,2,7"}, "bbox"),
        # epoch microseconds, before 1970, and digit-like text int() refuses
        ("/api/replay/frame", {"t": "1763658201512000"}, "t"),
        ("/api/replay/frame", {"t": "-1"}, "t"),
        ("/api/replay/frame", {"t": "--5"}, "t"),
        ("/api/replay/frame", {"t": "\u00b2"}, "t"),
        ("/api/timeline", {"from": iso(0, 0), "to": "99999999999999999"}, "to"),
        ("/api/peaks", {"from": "1763658201512000", "to": iso(1, 0)}, "from"),
    ],
)
def test_bad_parameters_are_400_json(client, viewer_headers, path, query, field):
    r = client.get(path, query_string=query, headers=viewer_headers)
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] == "invalid_parameter" and body["field"] == field and body["message"]


def test_auth(client, ingest_headers):
    q = {"from": iso(0, 0), "to": iso(1, 0)}
    assert client.get("/api/timeline", query_string=q).status_code == 401
    r = client.get("/api/peaks", query_string=q, headers=ingest_headers)
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
