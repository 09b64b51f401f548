"""Scale-out, shown: workers are stateless members of their consumer groups and web
processes share nothing but the servers.

One run (group joins cost seconds on the dev broker, so every assertion shares it):
two web processes ingest and serve; a sink and a live worker start, a second of each
joins while pings keep flowing (a rebalance under load), then the first of each leaves
(another rebalance). At the end PostGIS holds every ping exactly once, both web
processes serve the same live frame, and that frame is the one the heat definition
gives for the pings sent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import geohash
import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from app.auth import mint_token
from app.kafka_io import delete_topics, ensure_topics
from app.live_worker import LiveWorker
from app.postgis_sink import PostgisSink
from app.settings import Settings
from tests.conftest import wait_until

SPOTS = [(6.5095, 3.3711), (6.5180, 3.3790), (6.6018, 3.3515), (6.4281, 3.4219), (6.4550, 3.3900)]
DRIVERS = [f"drv-{i:02d}" for i in range(40)]


class WebProcess:
    """One app instance (own Services: Redis pool, producer, DB pool) on its own port."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.app.extensions["heatreplay"].close()


@pytest.fixture
def scaled(settings: Settings) -> Iterator[Settings]:
    """The same test settings with a 4-partition pings topic: partitions are a setting."""
    s = settings.with_(topic_pings=settings.topic_pings + "-p4", topic_partitions=4)
    ensure_topics(s, [s.topic_pings])
    yield s
    delete_topics(s, [s.topic_pings])


@pytest.fixture
def webs(scaled: Settings) -> Iterator[list[WebProcess]]:
    procs = [WebProcess(scaled), WebProcess(scaled)]
    yield procs
    for proc in procs:
        proc.close()


def expected_frame(sent: list[dict[str, Any]], t_ms: int, window_ms: int) -> dict[str, Any]:
    """The heat definition, independently: each driver's latest ping in (t - W, t]."""
    latest: dict[str, dict[str, Any]] = {}
    for p in sent:
        in_window = t_ms - window_ms < p["ts"] <= t_ms
        if in_window and p["ts"] > latest.get(p["driver_id"], {"ts": -1})["ts"]:
            latest[p["driver_id"]] = p
    cells = Counter(geohash.encode(p["lat"], p["lon"], 6) for p in latest.values())
    return {
        "cells": sorted([c, n] for c, n in cells.items()),
        "total": sum(cells.values()),
        "max": max(cells.values(), default=0),
    }


def test_two_of_each_worker_and_two_web_processes(scaled, webs, run_in_background, db):
    s = scaled
    ingest = {"Authorization": f"Bearer {mint_token(s, 'ingest')}"}
    viewer = {"Authorization": f"Bearer {mint_token(s, 'viewer')}"}
    sent: list[dict[str, Any]] = []
    rounds = 0

    def post_round() -> None:
        """Every driver moves to its next spot; alternate rounds go to either process."""
        nonlocal rounds
        ts = int(time.time() * 1000)
        batch = [
            {"driver_id": d, "lat": lat, "lon": lon, "ts": ts}
            for i, d in enumerate(DRIVERS)
            for lat, lon in [SPOTS[(i + rounds) % len(SPOTS)]]
        ]
        r = requests.post(
            f"{webs[rounds % 2].url}/api/pings", json=batch, headers=ingest, timeout=10
        )
        assert r.status_code == 202, r.text
        sent.extend(batch)
        rounds += 1

    sink_a, live_a = PostgisSink(s), LiveWorker(s)
    bg_sink_a, bg_live_a = run_in_background(sink_a), run_in_background(live_a)
    post_round()
    wait_until(lambda: sink_a.stats.rows == 40 and live_a.stats.pings == 40, timeout=30)

    # scale out under load: the second members join while rounds keep coming
    sink_b, live_b = PostgisSink(s), LiveWorker(s)
    run_in_background(sink_b)
    run_in_background(live_b)
    deadline = time.monotonic() + 30
    while not (sink_b.stats.rows and live_b.stats.pings):
        assert time.monotonic() < deadline, "the second members never got partitions"
        post_round()
        time.sleep(0.25)
    for _ in range(3):  # both members now share the partitions
        post_round()
        time.sleep(0.25)
    shared = (sink_a.stats.rows, sink_b.stats.rows)

    # scale in: the first members leave (their partitions move to the others)
    bg_sink_a.stop()
    bg_live_a.stop()
    stop_at = time.monotonic() + 6
    while time.monotonic() < stop_at:
        post_round()
        time.sleep(0.4)
    post_round()

    total = len(sent)
    assert total == 40 * rounds
    wait_until(lambda: db.execute("SELECT count(*) FROM pings").fetchone()[0] >= total, 30)
    time.sleep(0.5)  # a duplicate would land after the count was reached: give it time

    # history exact: every ping once, nothing else, written by exactly one member
    rows = db.execute(
        "SELECT driver_id, (extract(epoch FROM ts) * 1000)::bigint, ST_Y(geom), ST_X(geom) "
        "FROM pings"
    ).fetchall()
    assert len(rows) == total
    assert sorted(rows) == sorted((p["driver_id"], p["ts"], p["lat"], p["lon"]) for p in sent)
    assert sink_a.stats.rows + sink_b.stats.rows == total
    assert min(shared) > 0  # both members wrote while they shared the group
    assert db.execute(
        "SELECT sum(next_offset)::int, count(*)::int FROM sink_offsets "
        "WHERE consumer_group = %s AND topic = %s",
        (s.group_sink, s.topic_pings),
    ).fetchone() == (total, 4)

    # live exact, and the same from both web processes
    def frames() -> list[dict[str, Any]] | None:
        got = [
            requests.get(f"{w.url}/api/live?precision=6", headers=viewer, timeout=10).json()
            for w in webs
        ]
        for frame in got:
            t_ms = int(datetime.fromisoformat(frame["t"]).timestamp() * 1000)
            want = expected_frame(sent, t_ms, s.live_window_ms)
            if {k: frame[k] for k in ("cells", "total", "max")} != want:
                return None
        return got

    first, second = wait_until(frames, timeout=20, interval=0.2)
    assert first["cells"] == second["cells"]
    assert (first["total"], first["max"]) == (second["total"], second["max"]) == (40, 8)
    assert first["mode"] == second["mode"] == "live"
