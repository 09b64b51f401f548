"""What one analyst's requests may hold: an export whose client stops reading, exports
at once, and queries that run long. Each is let go or refused, so the sink can still
create a day partition (which locks ``pings``) and the pool stays free for the map."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app import create_app
from app.auth import mint_token
from app.settings import Settings

DAY = "2026-11-20"
RANGE = {"from": f"{DAY}T00:00:00Z", "to": f"{DAY}T06:00:00Z"}
AREA = {**RANGE, "bbox": "3.2,6.4,3.5,6.7"}  # every ping of the fixture
FUTURE = "2031-01-01"  # a partition only these tests create


@pytest.fixture
def history(base_settings: Settings, database_url: str) -> Iterator[Settings]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE pings, driver_minutes")
        conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (DAY,))
        conn.execute(  # 200k pings over six hours: enough work for a query to be timed out
            "INSERT INTO pings (ts, driver_id, geom, geohash) "
            "SELECT %s::timestamptz + (n * interval '100 ms'), 'd' || (n %% 500), "
            "ST_SetSRID(ST_MakePoint(3.3 + (n %% 97) * 0.001, 6.5 + (n %% 89) * 0.001), 4326), "
            "'s14mh9nb' FROM generate_series(0, 199999) n",
            (f"{DAY}T00:00:00Z",),
        )
    yield base_settings.with_(database_url=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS pings_{FUTURE.replace('-', '')}")
        conn.execute("TRUNCATE pings, driver_minutes")


def _app(settings: Settings) -> tuple[Any, dict[str, str]]:
    app = create_app(settings)
    return app, {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}


def _make_future_day(database_url: str, lock_timeout: str = "300ms") -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{lock_timeout}'")
        conn.execute("SELECT heatreplay_ensure_day_partition(%s)", (FUTURE,))


def test_an_export_nobody_reads_is_cut_off_and_frees_the_table(history: Settings) -> None:
    app, headers = _app(history.with_(export_stall_s=1.0))
    try:
        stalled = app.test_client().get(
            "/api/analytics/export", query_string=AREA, headers=headers, buffered=False
        )
        assert stalled.status_code == 200
        # its open cursor holds a lock on pings: a new day partition must wait for it
        with pytest.raises(psycopg.errors.LockNotAvailable):
            _make_future_day(history.database_url)
        time.sleep(1.5)  # past EXPORT_STALL_S with nothing read
        _make_future_day(history.database_url)  # the export's session has ended
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            b"".join(stalled.response)  # the rest of the body fails: no silent truncation
        stalled.close()
        # the slot came back: the next export streams to the end
        again = app.test_client().get(
            "/api/analytics/export", query_string={**AREA, "format": "csv"}, headers=headers
        )
        assert again.status_code == 200
        assert again.get_data(as_text=True).count("\n") == 1 + 200_000  # header + rows
    finally:
        app.extensions["heatreplay"].close()


def test_exports_past_the_limit_are_503_until_one_ends(history: Settings) -> None:
    app, headers = _app(history.with_(export_max_concurrent=2))
    try:
        client = app.test_client()
        running = [
            client.get("/api/analytics/export", query_string=AREA, headers=headers, buffered=False)
            for _ in range(2)
        ]
        assert [r.status_code for r in running] == [200, 200]
        refused = client.get("/api/analytics/export", query_string=AREA, headers=headers)
        assert refused.status_code == 503
        assert refused.get_json()["error"] == "unavailable"
        assert "EXPORT_MAX_CONCURRENT" in refused.get_json()["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        running[0].close()  # the client went away: its slot is free
        third = client.get(
            "/api/analytics/export", query_string=AREA, headers=headers, buffered=False
        )
        assert third.status_code == 200
        for r in (running[1], third):
            r.close()
    finally:
        app.extensions["heatreplay"].close()


def test_a_query_past_the_statement_timeout_is_503_query_timeout(history: Settings) -> None:
    app, headers = _app(history.with_(api_statement_timeout_s=0.001))
    try:
        r = app.test_client().get(
            "/api/analytics/top-cells", query_string={**RANGE, "precision": 8}, headers=headers
        )
        assert r.status_code == 503, r.get_data(as_text=True)
        body = r.get_json()
        assert body["error"] == "query_timeout"
        assert "API_STATEMENT_TIMEOUT_S" in body["message"]
    finally:
        app.extensions["heatreplay"].close()
    # the same request with the default timeout answers
    app, headers = _app(history)
    try:
        r = app.test_client().get(
            "/api/analytics/top-cells", query_string={**RANGE, "precision": 8}, headers=headers
        )
        assert r.status_code == 200
        assert sum(cell["pings"] for cell in r.get_json()["cells"]) == 200_000
    finally:
        app.extensions["heatreplay"].close()


def test_activity_totals_are_the_sums_of_its_points_while_the_sink_commits(
    history: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink commit between the points query and the totals query (injected: a ping
    committed from another connection right then) must not make them disagree."""
    from app import analytics_queries

    original = analytics_queries.activity_totals

    def totals_after_a_commit(conn: psycopg.Connection, *args: Any) -> tuple[int, int]:
        with psycopg.connect(history.database_url, autocommit=True) as other:
            other.execute(
                "INSERT INTO pings (ts, driver_id, geom, geohash) VALUES "
                "(%s, 'late', ST_SetSRID(ST_MakePoint(3.35, 6.55), 4326), 's14mh9nb')",
                (f"{DAY}T01:00:00Z",),
            )
        return original(conn, *args)

    monkeypatch.setattr(analytics_queries, "activity_totals", totals_after_a_commit)
    app, headers = _app(history)
    try:
        r = app.test_client().get(
            "/api/analytics/activity", query_string={**AREA, "step": 3600}, headers=headers
        )
        body = r.get_json()
        assert r.status_code == 200, body
        assert body["pings"] == sum(p[1] for p in body["points"]) == 200_000
    finally:
        app.extensions["heatreplay"].close()
