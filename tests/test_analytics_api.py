"""/api/analytics/* on a constructed data set whose answers are known exactly: pings in
the middle of a geohash-6 cell, on its west and east borders, just outside it, at the
range's ends, on the equator (geodesic length known in closed form) and next to the
antimeridian. Bad parameters and injection attempts get typed 4xx answers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import geohash
import psycopg
import pytest

from app import create_app
from app.auth import mint_token
from app.copy_rows import COPY_SQL, encode_copy
from app.ping import Ping
from app.settings import Settings
from tests.conftest import wait_until

T0 = 1_795_161_600_000  # 2026-11-20T08:00:00Z
T0_ISO = "2026-11-20T08:00:00Z"
TO_ISO = "2026-11-20T08:03:00Z"  # T0 + 180 s
# geohash-6 cell s14mh9 and its east neighbour s14mhc share the edge lon = E
W, S, E, N = 3.36181640625, 6.5093994140625, 3.372802734375, 6.514892578125
CX, CY = (W + E) / 2, (S + N) / 2
CELL = [[W, S], [E, S], [E, N], [W, N], [W, S]]
CELL_POLYGON = {"type": "Polygon", "coordinates": [CELL]}
CELL_BBOX = f"{W},{S},{E},{N}"
# 0.01 degree of longitude on the equator of the WGS 84 spheroid: a * 0.01 * pi / 180
EQ_STEP_M = 6378137 * 0.01 * 3.141592653589793 / 180

DATA = [
    Ping("A", CY, CX, T0 + 10_000, speed_kmh=31.5, heading=270.0),
    Ping("B", CY, CX, T0 + 70_000),
    Ping("A", CY, W, T0 + 130_000),  # on the west edge: in s14mh9
    Ping("C1", CY, E, T0 + 20_000),  # on the shared east edge: in s14mhc
    Ping("D", CY, E + 0.001, T0 + 30_000),  # outside the polygon, in s14mhc
    Ping("A", CY, CX, T0 + 180_000),  # exactly at `to`: excluded
    Ping("B", CY, CX, T0 - 1),  # just before `from`: excluded
    Ping("EQ", 0.0, 10.0, T0 + 5_000),
    Ping("EQ", 0.0, 10.01, T0 + 65_000),
    Ping("EQ", 0.0, 10.02, T0 + 125_000),
    Ping("AM", 10.0, 179.9, T0 + 40_000),
]


@pytest.fixture(scope="module")
def analytics_settings(base_settings: Settings, database_url: str) -> Settings:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE pings, driver_minutes")
        conn.execute("SELECT heatreplay_ensure_day_partition('2026-11-20')")
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(encode_copy(DATA))
    return base_settings.with_(database_url=database_url, max_polygon_vertices=50)


def _client(settings: Settings) -> Iterator[Any]:
    app = create_app(settings)
    yield app.test_client()
    app.extensions["heatreplay"].close()


@pytest.fixture(scope="module")
def client(analytics_settings: Settings) -> Iterator[Any]:
    yield from _client(analytics_settings)


@pytest.fixture(scope="module")
def headers(analytics_settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(analytics_settings, 'viewer')}"}


def get(client: Any, headers: dict[str, str], url: str, **params: Any) -> Any:
    return client.get(url, query_string=params, headers=headers)


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


# ---- activity


def test_activity_in_a_polygon_on_cell_borders(client, headers):
    body = ok(
        get(
            client,
            headers,
            "/api/analytics/activity",
            polygon=json.dumps(CELL_POLYGON),
            **{"from": T0_ISO, "to": TO_ISO, "step": 60},
        )
    )
    # the boundary belongs to the polygon: the west-edge and east-edge pings count
    assert body["points"] == [
        ["2026-11-20T08:00:00Z", 2, 2],
        ["2026-11-20T08:01:00Z", 1, 1],
        ["2026-11-20T08:02:00Z", 1, 1],
    ]
    assert (body["pings"], body["drivers"]) == (4, 3)
    assert body["from"] == T0_ISO and body["to"] == TO_ISO and body["step"] == 60
    assert body["area"] == CELL_POLYGON


def test_activity_same_by_bbox_post_body_and_feature(client, headers):
    params = {"from": T0, "to": T0 + 180_000, "step": 70}
    by_bbox = ok(get(client, headers, "/api/analytics/activity", bbox=CELL_BBOX, **params))
    feature = {"type": "Feature", "properties": {"n": "x"}, "geometry": CELL_POLYGON}
    by_post = ok(
        client.post("/api/analytics/activity", query_string=params, json=feature, headers=headers)
    )
    expected = [
        ["2026-11-20T08:00:00Z", 2, 2],
        ["2026-11-20T08:01:10Z", 2, 2],
        ["2026-11-20T08:02:20Z", 0, 0],  # a partial last step, empty
    ]
    assert by_bbox["points"] == expected
    assert by_post["points"] == expected
    assert by_bbox["area"] == {"type": "bbox", "bbox": [W, S, E, N]}


def test_activity_multipolygon_and_antimeridian_edge(client, headers):
    eq_square = [[[9.995, -0.005], [10.015, -0.005], [10.015, 0.005], [9.995, 0.005]]]
    eq_square[0].append(eq_square[0][0])
    touching_180 = [[[179.5, 9.5], [180, 9.5], [180, 10.5], [179.5, 10.5], [179.5, 9.5]]]
    multi = {"type": "MultiPolygon", "coordinates": [eq_square, touching_180]}
    body = ok(
        client.post(
            "/api/analytics/activity",
            query_string={"from": T0_ISO, "to": TO_ISO, "step": 180},
            json=multi,
            headers=headers,
        )
    )
    # EQ at lon 10.0 and 10.01 (10.02 is outside), AM at lon 179.9
    assert body["points"] == [["2026-11-20T08:00:00Z", 3, 2]]


def test_activity_empty_ranges(client, headers):
    empty = ok(
        get(
            client,
            headers,
            "/api/analytics/activity",
            bbox=CELL_BBOX,
            **{"from": T0_ISO, "to": T0_ISO},
        )
    )
    assert (empty["points"], empty["pings"], empty["drivers"]) == ([], 0, 0)
    quiet = ok(
        get(
            client,
            headers,
            "/api/analytics/activity",
            bbox=CELL_BBOX,
            **{"from": "2026-11-20T09:00:00Z", "to": "2026-11-20T09:02:00Z", "step": 60},
        )
    )
    assert quiet["points"] == [["2026-11-20T09:00:00Z", 0, 0], ["2026-11-20T09:01:00Z", 0, 0]]


# ---- top cells


def test_top_cells_exact(client, headers):
    rng = {"from": T0_ISO, "to": TO_ISO}
    body = ok(get(client, headers, "/api/analytics/top-cells", precision=6, top=4, **rng))
    assert [(c["cell"], c["pings"], c["drivers"]) for c in body["cells"]] == [
        ("s14mh9", 3, 2),
        ("s14mhc", 2, 2),
        ("s0p058", 1, 1),
        ("s0p05b", 1, 1),
    ]
    assert body["cells"][0]["bbox"] == [W, S, E, N]
    coarse = ok(get(client, headers, "/api/analytics/top-cells", precision=1, **rng))
    assert [(c["cell"], c["pings"], c["drivers"]) for c in coarse["cells"]] == [
        ("s", 8, 5),
        ("x", 1, 1),
    ]
    inside = ok(
        get(client, headers, "/api/analytics/top-cells", polygon=json.dumps(CELL_POLYGON), **rng)
    )
    # the east-edge ping is inside the polygon but belongs to the east cell
    assert [(c["cell"], c["pings"], c["drivers"]) for c in inside["cells"]] == [
        ("s14mh9", 3, 2),
        ("s14mhc", 1, 1),
    ]
    empty = ok(get(client, headers, "/api/analytics/top-cells", **{"from": T0, "to": T0}))
    assert empty["cells"] == []


# ---- driver path


def test_driver_path_linestring_and_distance(client, headers):
    rng = {"from": T0_ISO, "to": TO_ISO}
    eq = ok(get(client, headers, "/api/analytics/drivers/EQ/path", **rng))
    assert eq["geometry"] == {
        "type": "LineString",
        "coordinates": [[10.0, 0.0], [10.01, 0.0], [10.02, 0.0]],
    }
    assert eq["properties"]["pings"] == 3
    assert eq["properties"]["first_ts"] == "2026-11-20T08:00:05Z"
    assert eq["properties"]["last_ts"] == "2026-11-20T08:02:05Z"
    assert eq["properties"]["distance_m"] == pytest.approx(2 * EQ_STEP_M, abs=1e-6)

    a = ok(get(client, headers, "/api/analytics/drivers/A/path", format="collection", **rng))
    line, *points = a["features"]
    assert line["geometry"]["coordinates"] == [[CX, CY], [W, CY]]
    assert [(p["properties"]["ts"], p["properties"]["speed_kmh"]) for p in points] == [
        ("2026-11-20T08:00:10Z", 31.5),
        ("2026-11-20T08:02:10Z", None),
    ]
    with_end = ok(
        get(client, headers, "/api/analytics/drivers/A/path", **{"from": T0, "to": T0 + 180_001})
    )
    assert with_end["geometry"]["coordinates"] == [[CX, CY], [W, CY], [CX, CY]]


def test_driver_path_single_point_and_none(client, headers):
    one = ok(
        get(
            client,
            headers,
            "/api/analytics/drivers/B/path",
            **{"from": T0, "to": T0 + 120_000},
        )
    )
    assert one["geometry"] == {"type": "Point", "coordinates": [CX, CY]}
    assert (one["properties"]["pings"], one["properties"]["distance_m"]) == (1, 0.0)
    none = ok(
        get(client, headers, "/api/analytics/drivers/nobody/path", **{"from": T0, "to": T0 + 1})
    )
    assert none["geometry"] is None and none["properties"]["pings"] == 0


# ---- export


def gh8(lat: float, lon: float) -> str:
    return str(geohash.encode(lat, lon, 8))


def _export(client, headers, **params):
    response = client.get("/api/analytics/export", query_string=params, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    response.close()
    return response, text


EXPORT_ROWS = [
    ["2026-11-20T08:00:10.000Z", "A", repr(CX), repr(CY), gh8(CY, CX), "31.5", "270"],
    ["2026-11-20T08:00:20.000Z", "C1", repr(E), repr(CY), gh8(CY, E), "", ""],
    ["2026-11-20T08:01:10.000Z", "B", repr(CX), repr(CY), gh8(CY, CX), "", ""],
    ["2026-11-20T08:02:10.000Z", "A", repr(W), repr(CY), gh8(CY, W), "", ""],
]


def test_export_csv_exact(client, headers):
    response, text = _export(
        client, headers, bbox=CELL_BBOX, format="csv", **{"from": T0_ISO, "to": TO_ISO}
    )
    assert response.mimetype == "text/csv"
    assert response.headers["X-Export-Max-Rows"] == "1000000"
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["ts", "driver_id", "lon", "lat", "geohash", "speed_kmh", "heading"]
    assert rows[1:] == EXPORT_ROWS
    assert [r[4][:6] for r in rows[1:]] == ["s14mh9", "s14mhc", "s14mh9", "s14mh9"]
    assert not text.rstrip("\n").splitlines()[-1].startswith("#")


def test_export_geojson_exact(client, headers):
    response, text = _export(
        client, headers, bbox=CELL_BBOX, format="geojson", **{"from": T0_ISO, "to": TO_ISO}
    )
    assert response.mimetype == "application/geo+json"
    body = json.loads(text)
    assert body["type"] == "FeatureCollection"
    assert (body["count"], body["truncated"]) == (4, False)
    got = [
        (f["properties"]["ts"], f["properties"]["driver_id"], f["geometry"]["coordinates"])
        for f in body["features"]
    ]
    assert got == [(r[0], r[1], [float(r[2]), float(r[3])]) for r in EXPORT_ROWS]
    assert body["features"][0]["properties"]["speed_kmh"] == 31.5
    assert body["features"][1]["properties"]["heading"] is None


def test_export_cap_marker(analytics_settings, headers):
    for client in _client(analytics_settings.with_(export_max_rows=3)):
        rng = {"from": T0_ISO, "to": TO_ISO, "bbox": CELL_BBOX}
        response, text = _export(client, headers, format="csv", **rng)
        lines = text.splitlines()
        assert response.headers["X-Export-Max-Rows"] == "3"
        assert len(lines) == 5  # header, 3 rows, marker
        assert lines[-1] == (
            "# truncated: export stopped at EXPORT_MAX_ROWS=3 rows; more rows match: "
            "narrow the bbox or the time range"
        )
        _, text = _export(client, headers, format="geojson", **rng)
        body = json.loads(text)
        assert (len(body["features"]), body["count"]) == (3, 3)
        assert (body["truncated"], body["max_rows"]) == (True, 3)
        assert "EXPORT_MAX_ROWS=3" in body["message"]
        # exactly at the cap is not truncated
        exact = {"from": T0_ISO, "to": "2026-11-20T08:02:00Z", "bbox": CELL_BBOX}
        _, text = _export(client, headers, format="geojson", **exact)
        assert (json.loads(text)["count"], json.loads(text)["truncated"]) == (3, False)


def test_empty_export(client, headers):
    _, text = _export(client, headers, bbox=CELL_BBOX, **{"from": T0, "to": T0})
    assert text == "ts,driver_id,lon,lat,geohash,speed_kmh,heading\n"
    _, text = _export(client, headers, bbox=CELL_BBOX, format="geojson", **{"from": T0, "to": T0})
    assert json.loads(text) == {
        "type": "FeatureCollection",
        "features": [],
        "count": 0,
        "truncated": False,
    }


# ---- rejections

BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
ACROSS_180 = {
    "type": "Polygon",
    "coordinates": [[[179, 0], [-179, 0], [-179, 1], [179, 1], [179, 0]]],
}
POLE = {"type": "Polygon", "coordinates": [[[0, 80], [10, 80], [10, 90], [0, 80]]]}
HUGE = {"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 30], [0, 0]]]}
# small in area (a frame 0.1 degree wide), but its extent is most of the world
FRAME = {
    "type": "Polygon",
    "coordinates": [
        [[-170, -80], [0, -80], [170, -80], [170, 80], [0, 80], [-170, 80], [-170, -80]],
        [
            *([-169.9, -79.9], [-169.9, 79.9], [0, 79.9], [169.9, 79.9]),
            *([169.9, -79.9], [0, -79.9], [-169.9, -79.9]),
        ],
    ],
}
HUGE_NUMBER = '{"type":"Polygon","coordinates":[[[1' + "0" * 400 + ",0],[1,0],[1,1],[0,0]]]}"
MANY = {
    "type": "Polygon",
    "coordinates": [[[i * 0.001, 0] for i in range(60)] + [[0, 0.01], [0, 0]]],
}
RNG = {"from": T0_ISO, "to": TO_ISO}


@pytest.mark.parametrize(
    ("params", "status", "error", "needle"),
    [
        ({"from": TO_ISO, "to": T0_ISO, "bbox": CELL_BBOX}, 400, "invalid_range", "inverted"),
        ({"from": "yesterday", "to": TO_ISO, "bbox": CELL_BBOX}, 400, "invalid_parameter", "from"),
        ({"to": TO_ISO, "bbox": CELL_BBOX}, 400, "invalid_parameter", "from is required"),
        ({"from": 0, "to": T0, "bbox": CELL_BBOX}, 422, "limit_exceeded", "MAX_RANGE_S"),
        ({**RNG}, 400, "invalid_parameter", "area is required"),
        ({**RNG, "bbox": "0,0,30,30"}, 422, "limit_exceeded", "MAX_BBOX_AREA_DEG2"),
        ({**RNG, "bbox": "179,0,-179,1"}, 400, "invalid_parameter", "west <= east"),
        ({**RNG, "bbox": "0,80,10,90"}, 422, "unsupported_area", "pole"),
        ({**RNG, "bbox": "1,2,3"}, 400, "invalid_parameter", "west,south"),
        ({**RNG, "polygon": "{not json"}, 400, "invalid_geojson", "not JSON"),
        (
            {**RNG, "polygon": '{"type":"Point","coordinates":[0,0]}'},
            400,
            "invalid_geojson",
            "Point",
        ),
        (
            {**RNG, "polygon": '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}'},
            400,
            "invalid_geojson",
            "end where it starts",
        ),
        (
            {**RNG, "polygon": '{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}'},
            400,
            "invalid_geojson",
            "at least 4",
        ),
        (
            {**RNG, "polygon": '{"type":"Polygon","coordinates":[[[0,0],[1,95],[1,0],[0,0]]]}'},
            400,
            "invalid_geojson",
            "outside",
        ),
        (
            {**RNG, "polygon": json.dumps(BOWTIE)},
            422,
            "invalid_polygon",
            "Self-intersection[0.5 0.5]",
        ),
        ({**RNG, "polygon": json.dumps(ACROSS_180)}, 422, "unsupported_area", "antimeridian"),
        ({**RNG, "polygon": json.dumps(POLE)}, 422, "unsupported_area", "pole"),
        ({**RNG, "polygon": json.dumps(HUGE)}, 422, "limit_exceeded", "square degrees"),
        ({**RNG, "polygon": json.dumps(FRAME)}, 422, "limit_exceeded", "extent covers"),
        ({**RNG, "polygon": HUGE_NUMBER}, 400, "invalid_geojson", "finite"),
        ({**RNG, "bbox": "3.37,6.51,3.37,6.51"}, 422, "unsupported_area", "single point"),
        ({**RNG, "polygon": json.dumps(MANY)}, 422, "limit_exceeded", "MAX_POLYGON_VERTICES"),
        (
            {**RNG, "polygon": json.dumps(CELL_POLYGON), "bbox": CELL_BBOX},
            400,
            "invalid_parameter",
            "not both",
        ),
        ({**RNG, "bbox": CELL_BBOX, "step": 0}, 400, "invalid_parameter", "step"),
        ({**RNG, "bbox": CELL_BBOX, "step": "1e3"}, 400, "invalid_parameter", "step"),
        (
            {"from": T0, "to": T0 + 86_400_000, "bbox": CELL_BBOX, "step": 1},
            422,
            "limit_exceeded",
            "steps",
        ),
    ],
)
def test_activity_rejections(client, headers, params, status, error, needle):
    response = get(client, headers, "/api/analytics/activity", **params)
    body = response.get_json()
    assert (response.status_code, body["error"]) == (status, error), body
    assert needle in body["message"]


def test_bowtie_reason_and_other_endpoint_rejections(client, headers):
    bad = client.post(
        "/api/analytics/top-cells", query_string=RNG, json=BOWTIE, headers=headers
    ).get_json()
    assert bad["reason"] == "Self-intersection[0.5 0.5]"
    cases = [
        ("/api/analytics/top-cells", {**RNG, "top": 0}, "top"),
        ("/api/analytics/top-cells", {**RNG, "precision": 9}, "precision"),
        ("/api/analytics/export", {**RNG, "bbox": CELL_BBOX, "format": "xml"}, "format"),
        ("/api/analytics/drivers/A/path", {**RNG, "format": "kml"}, "format"),
        ("/api/analytics/drivers/a%20b/path", RNG, "driver_id"),
    ]
    for url, params, field in cases:
        response = get(client, headers, url, **params)
        assert response.status_code == 400, (url, response.get_json())
        assert response.get_json()["field"] == field
    post_empty = client.post("/api/analytics/activity", query_string=RNG, headers=headers)
    assert post_empty.get_json()["error"] == "invalid_geojson"
    nested = client.post(
        "/api/analytics/activity", query_string=RNG, data="[" * 100_000, headers=headers
    )
    assert nested.status_code == 400
    assert nested.get_json()["message"] == "polygon is nested too deeply"
    micro = get(client, headers, "/api/analytics/top-cells", **{**RNG, "to": "1763658201512000"})
    assert (micro.status_code, micro.get_json()["field"]) == (400, "to")
    assert client.get("/api/analytics/activity", query_string=RNG).status_code == 401
    ingest = {
        "Authorization": f"Bearer {mint_token(client.application.config['SETTINGS'], 'ingest')}"
    }
    assert (
        client.get("/api/analytics/top-cells", query_string=RNG, headers=ingest).status_code == 403
    )


ENDPOINT_PARAMS = {
    "/api/analytics/activity": ("from", "to", "bbox", "polygon", "step"),
    "/api/analytics/top-cells": ("from", "to", "bbox", "polygon", "precision", "top"),
    "/api/analytics/export": ("from", "to", "bbox", "polygon", "format"),
}
INJECTIONS = [
    "'; DROP TABLE pings; --",
    "1); DELETE FROM pings; --",
    "s14mh9' OR '1'='1",
    "$$; TRUNCATE pings; $$",
]


def test_injection_attempts_are_harmless(client, headers, database_url):
    statuses = set()
    for attack in INJECTIONS:
        for url, names in ENDPOINT_PARAMS.items():
            for name in names:
                params = {**RNG, "bbox": CELL_BBOX, name: attack}
                if name == "polygon":
                    params.pop("bbox")
                response = get(client, headers, url, **params)
                statuses.add(response.status_code)
                assert 400 <= response.status_code < 500, (url, name, response.get_json())
                response.close()
        # a polygon whose members carry SQL text: the text is data, never SQL
        sneaky = {"type": "Feature", "properties": {"q": attack}, "geometry": CELL_POLYGON}
        assert (
            ok(
                client.post(
                    "/api/analytics/activity", query_string=RNG, json=sneaky, headers=headers
                )
            )["pings"]
            == 4
        )
        response = get(client, headers, f"/api/analytics/drivers/{attack}/path", **RNG)
        assert response.status_code in (400, 404)
    # allowed characters that look like SQL are just an unknown driver
    assert (
        ok(get(client, headers, "/api/analytics/drivers/x:--/path", **RNG))["properties"]["pings"]
        == 0
    )
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM pings").fetchone() == (len(DATA),)
    assert statuses <= {400, 422}


def test_export_connection_ends_when_the_client_goes_away(client, headers, database_url):
    def export_sessions() -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'DECLARE \"export_%%'"
            ).fetchone()
        return int(row[0]) if row else -1

    response = client.get(
        "/api/analytics/export",
        query_string={**RNG, "bbox": CELL_BBOX},
        headers=headers,
        buffered=False,
    )
    first = next(iter(response.response))
    assert first.startswith(b"ts,driver_id")
    assert export_sessions() == 1  # the cursor is open while the body streams
    response.close()  # what the WSGI server does when the client disconnects
    # the backend exits a moment after the socket closes
    wait_until(lambda: export_sessions() == 0, timeout=10, interval=0.05)
