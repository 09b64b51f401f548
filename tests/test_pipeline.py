"""End to end through the real broker: HTTP -> Kafka -> live counts in Redis + rows in
PostGIS, with drivers moving between cells, out-of-order and old pings, and drivers
going quiet past the live window; in SPEC's one message per ping and in messages of up
to 3 pings (KAFKA_PINGS_PER_MESSAGE, app/wire.py), with the same frames and rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from app.live_worker import LiveWorker
from app.postgis_sink import PostgisSink
from tests.conftest import wait_until

YABA = (6.5095, 3.3711)  # s14mh9nb
YABA2 = (6.5180, 3.3790)  # s14mhfsd
YABA3 = (6.5101, 3.3716)  # s14mh9ph
IKEJA = (6.6018, 3.3515)  # s14ms3b6
VI = (6.4281, 3.4219)  # s14ktf5y


def p(driver: str, where: tuple[float, float], ts: int, **extra: float) -> dict:
    return {"driver_id": driver, "lat": where[0], "lon": where[1], "ts": ts, **extra}


@pytest.fixture(params=[1, 3], ids=["one-ping-per-message", "3-pings-per-message"])
def settings(settings, request):
    return settings.with_(kafka_pings_per_message=request.param)


@pytest.fixture
def pipeline(settings, run_in_background):
    s = settings
    live = LiveWorker(s)
    sink = PostgisSink(s)
    run_in_background(live)
    run_in_background(sink)
    return s, live, sink


def test_live_frames_and_history_are_exact(
    pipeline, client, ingest_headers, viewer_headers, app, db
):
    _s, live, sink = pipeline
    warm_ts = int(time.time() * 1000) - 120_000
    assert (
        client.post(
            "/api/pings", json=p("warm", IKEJA, warm_ts), headers=ingest_headers
        ).status_code
        == 202
    )
    wait_until(lambda: live.stats.pings >= 1 and sink.stats.rows >= 1, timeout=60)

    t0 = int(time.time() * 1000)
    first = [
        p("A", YABA, t0 - 8000, speed_kmh=20.0, heading=10.0),
        p("A", IKEJA, t0 - 4000),
        p("B", YABA, t0 - 5000),
        p("C", YABA3, t0 - 3000),
        p("D", VI, t0 - 7000),
        p("E", YABA2, t0 - 2000),
        p("F", VI, t0 - 60_000),  # older than the window: history only
    ]
    late = [p("C", VI, t0 - 6000)]  # out of order: older than C's latest, must not move C
    assert client.post("/api/pings", json=first, headers=ingest_headers).status_code == 202
    assert client.post("/api/pings", json=late, headers=ingest_headers).status_code == 202
    wait_until(lambda: live.stats.pings >= 9 and sink.stats.rows >= 9, timeout=30)

    from app.live_api import live_frame
    from replay.heat import View, parse_bbox

    with app.app_context():
        f5 = live_frame(View(5), t0 + 2000)
        f6 = live_frame(View(6), t0 + 2000)
        f7 = live_frame(View(7), t0 + 2000)
        yaba_only = live_frame(View(6, parse_bbox("3.36,6.50,3.385,6.52")), t0 + 2000)
        later = live_frame(View(5), t0 + 4000)  # D (t0-7s) has gone quiet
        latest = live_frame(View(6), t0 + 5500)  # and B (t0-5s) too

    def iso(ms):
        return (
            datetime.fromtimestamp(ms / 1000, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )

    assert f5 == {
        "type": "frame",
        "mode": "live",
        "t": iso(t0 + 2000),
        "precision": 5,
        "cells": [["s14kt", 1], ["s14mh", 3], ["s14ms", 1]],
        "total": 5,
        "max": 3,
    }
    assert f6["cells"] == [["s14ktf", 1], ["s14mh9", 2], ["s14mhf", 1], ["s14ms3", 1]]
    assert (f6["total"], f6["max"]) == (5, 2)
    assert f7["cells"] == [
        ["s14ktf5", 1],
        ["s14mh9n", 1],
        ["s14mh9p", 1],
        ["s14mhfs", 1],
        ["s14ms3b", 1],
    ]
    assert yaba_only["cells"] == [["s14mh9", 2], ["s14mhf", 1]]
    assert yaba_only["bbox"] == [3.36, 6.5, 3.385, 6.52]
    assert later["cells"] == [["s14mh", 3], ["s14ms", 1]]
    assert latest["cells"] == [["s14mh9", 1], ["s14mhf", 1], ["s14ms3", 1]]

    # the HTTP endpoint serves the same builder at the server's clock
    r = client.get("/api/live?precision=5&bbox=2.7,6.3,4.4,6.8", headers=viewer_headers)
    assert r.status_code == 200 and r.get_json()["mode"] == "live"

    rows = db.execute(
        "SELECT driver_id, (extract(epoch FROM ts) * 1000)::bigint, ST_X(geom), ST_Y(geom), "
        "ST_SRID(geom), geohash, speed_kmh, heading FROM pings ORDER BY driver_id, ts"
    ).fetchall()
    expected = sorted(
        [("warm", warm_ts, IKEJA)]
        + [(q["driver_id"], q["ts"], (q["lat"], q["lon"])) for q in first + late],
        key=lambda r: (r[0], r[1]),
    )
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (d, ts, lon, lat, 4326) for d, ts, (lat, lon) in expected
    ]
    by_driver_ts = {(r[0], r[1]): r for r in rows}
    assert by_driver_ts[("A", t0 - 8000)][5:] == ("s14mh9nb", 20.0, 10.0)
    assert by_driver_ts[("A", t0 - 4000)][5:] == ("s14ms3b6", None, None)
    minutes = db.execute(
        "SELECT (SELECT sum(pings)::int FROM minute_stats), "
        "(SELECT count(DISTINCT driver_id)::int FROM driver_minutes)"
    ).fetchone()
    assert minutes == (9, 7)


def test_day_partitions_are_created_for_backfill(pipeline, client, ingest_headers, db):
    _s, _live, sink = pipeline
    old = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    body = [
        p("old", VI, int(old.timestamp() * 1000)),
        p("old", VI, int((old + timedelta(seconds=2)).timestamp() * 1000)),
    ]
    assert client.post("/api/pings", json=body, headers=ingest_headers).status_code == 202
    wait_until(lambda: sink.stats.rows >= 2, timeout=60)
    parts = db.execute(
        "SELECT c.relname, count(*) OVER () FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'pings'::regclass "
        "AND c.relname IN ('pings_20240229', 'pings_20240301')"
    ).fetchall()
    assert sorted(r[0] for r in parts) == ["pings_20240229", "pings_20240301"]
    counts = db.execute(
        "SELECT tableoid::regclass::text, count(*) FROM pings "
        "WHERE driver_id = 'old' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert counts == [("pings_20240229", 1), ("pings_20240301", 1)]
