"""GET /api/drivers/<id> (the follow-a-driver panel): live from Redis, replay at t from
PostGIS, exact values; its trail range fed to the analytics path endpoint gives the
exact line; replay frames over HTTP carry the markers; bad input is a JSON 4xx."""

from __future__ import annotations

import time

import pytest
import redis

from app.live_counts import LiveCounts
from app.ping import Ping
from replay.heat import iso_ms, parse_time_ms
from tests.replay_support import ensure_days, write_history

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA3 = (6.5101, 3.3716)  # s14mh9ph
IKEJA = (6.6018, 3.3515)  # s14ms3b6
T0 = 1_795_194_000_000  # 2026-11-20T17:00:00Z


@pytest.fixture
def live(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield LiveCounts(client, settings)
    client.close()


def test_live_driver_from_redis_and_its_trail(client, viewer_headers, live, db):
    now = int(time.time() * 1000)
    ensure_days(db, now - 120_000, now)
    trail = [
        Ping("drv-7", *IKEJA, now - 90_000, speed_kmh=40.0, heading=180.0),
        Ping("drv-7", *YABA, now - 3000, speed_kmh=20.0, heading=90.0),
        Ping("drv-7", *YABA3, now - 2000, speed_kmh=31.5, heading=45.5),
    ]
    write_history(db, [trail])
    live.apply(trail[1:], now)

    r = client.get("/api/drivers/drv-7", headers=viewer_headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    asked = body.pop("t")
    trail_range = body.pop("trail")
    assert body == {
        "driver_id": "drv-7",
        "mode": "live",
        "lat": 6.5101,
        "lon": 3.3716,
        "speed_kmh": 31.5,
        "heading": 45.5,
        "last_seen": iso_ms(now - 2000),
        "cell": "s14mh9ph",
    }
    assert trail_range["minutes"] == 10
    assert (trail_range["from"], trail_range["to"]) == (
        iso_ms(parse_time_ms(asked) - 600_000),
        iso_ms(parse_time_ms(asked) + 1),
    )
    path = client.get("/" + trail_range["path"], headers=viewer_headers).get_json()
    assert path["geometry"] == {
        "type": "LineString",
        "coordinates": [[3.3515, 6.6018], [3.3711, 6.5095], [3.3716, 6.5101]],
    }
    # a shorter trail leaves the Ikeja ping out
    short = client.get(
        "/api/drivers/drv-7", query_string={"trail_minutes": 1}, headers=viewer_headers
    ).get_json()["trail"]
    line = client.get("/" + short["path"], headers=viewer_headers).get_json()["geometry"]
    assert line["coordinates"] == [[3.3711, 6.5095], [3.3716, 6.5101]]

    # a driver whose latest ping has left the window is not on the live map
    live.apply([Ping("quiet", *YABA, now - 20_000)], now - 20_000)
    for name in ("quiet", "nobody"):
        r = client.get(f"/api/drivers/{name}", headers=viewer_headers)
        assert r.status_code == 404
        assert r.get_json()["error"] == "not_found" and r.get_json()["driver_id"] == name


def test_replay_driver_at_t_from_postgis(client, viewer_headers, db, settings):
    ensure_days(db, T0, T0)
    write_history(
        db,
        [
            [
                Ping("drv-7", *IKEJA, T0 - 60_000, speed_kmh=40.0, heading=180.0),
                Ping("drv-7", *YABA, T0 - 3000, speed_kmh=12.5),
                # same ts, two cells: the larger geohash-8 (Ikeja) is where the heat has it
                Ping("tie", *YABA, T0 - 1000, heading=10.0),
                Ping("tie", *IKEJA, T0 - 1000, heading=20.0),
                Ping("drv-7", *YABA3, T0 + 5000, speed_kmh=50.0),  # after t
            ]
        ],
    )
    r = client.get("/api/drivers/drv-7", query_string={"t": T0}, headers=viewer_headers)
    assert r.get_json() == {
        "driver_id": "drv-7",
        "mode": "replay",
        "t": "2026-11-20T17:00:00Z",
        "lat": 6.5095,
        "lon": 3.3711,
        "speed_kmh": 12.5,
        "heading": None,
        "last_seen": "2026-11-20T16:59:57Z",
        "cell": "s14mh9nb",
        "trail": {
            "minutes": 10,
            "from": "2026-11-20T16:50:00Z",
            "to": "2026-11-20T17:00:00.001Z",
            "path": "api/analytics/drivers/drv-7/path?from=2026-11-20T16%3A50%3A00Z"
            "&to=2026-11-20T17%3A00%3A00.001Z",
        },
    }
    line = client.get("/" + r.get_json()["trail"]["path"], headers=viewer_headers).get_json()
    assert line["geometry"]["coordinates"] == [[3.3515, 6.6018], [3.3711, 6.5095]]

    tie = client.get(
        "/api/drivers/tie", query_string={"t": "2026-11-20T17:00:00Z"}, headers=viewer_headers
    ).get_json()
    assert (tie["cell"], tie["lat"], tie["heading"]) == ("s14ms3b6", 6.6018, 20.0)
    # at t + 8 s drv-7's Yaba ping (t - 3 s) has left the 10 s window; t + 5 s has not come
    r = client.get("/api/drivers/drv-7", query_string={"t": T0 + 8000}, headers=viewer_headers)
    assert r.get_json()["last_seen"] == "2026-11-20T17:00:05Z"
    r = client.get("/api/drivers/drv-7", query_string={"t": T0 + 15_001}, headers=viewer_headers)
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"

    # the replay frame at t over HTTP carries the markers at street zoom
    frame = client.get(
        "/api/replay/frame",
        query_string={"t": T0, "precision": 7, "bbox": "3.30,6.45,3.40,6.65"},
        headers=viewer_headers,
    ).get_json()
    assert frame["markers"] == [["drv-7", 6.5095, 3.3711, None], ["tie", 6.6018, 3.3515, 20.0]]
    frame6 = client.get(
        "/api/replay/frame", query_string={"t": T0, "precision": 6}, headers=viewer_headers
    ).get_json()
    assert "markers" not in frame6 and frame6["total"] == 2


@pytest.mark.parametrize(
    ("path", "query", "status", "field"),
    [
        ("/api/drivers/bad%20id", {}, 400, "driver_id"),
        ("/api/drivers/" + "x" * 65, {}, 400, "driver_id"),
        ("/api/drivers/drv-7", {"t": "yesterday"}, 400, "t"),
        ("/api/drivers/drv-7", {"trail_minutes": 0}, 400, "trail_minutes"),
        ("/api/drivers/drv-7", {"trail_minutes": "ten"}, 400, "trail_minutes"),
    ],
)
def test_bad_input_is_a_json_400(client, viewer_headers, path, query, status, field):
    r = client.get(path, query_string=query, headers=viewer_headers)
    assert r.status_code == status
    body = r.get_json()
    assert body["error"] == "invalid_parameter" and body["field"] == field and body["message"]


def test_needs_a_viewer_token(client, ingest_headers):
    assert client.get("/api/drivers/drv-7").status_code == 401
    r = client.get("/api/drivers/drv-7", headers=ingest_headers)
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
