"""Streamed export of raw pings as CSV or GeoJSON, in constant memory.

PostgreSQL renders each row as one line of text; a server-side cursor hands them over
``FETCH_ROWS`` at a time and the response yields them on, so the web process holds one
batch whatever the export's size. At most EXPORT_MAX_ROWS rows: the cap is announced
up front in the ``X-Export-Max-Rows`` header (the body's size is unknown until the end),
and when it is hit the body ends with a marker — a ``# truncated: ...`` CSV comment
line, or ``"truncated": true`` with a message in the GeoJSON object — so a cut file can
never pass for a complete one.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any, LiteralString

import psycopg
from flask import Response

from app.analytics_queries import compose, range_params
from app.db import api_options
from app.errors import ServiceUnavailable
from app.geo_params import Area, TimeRange
from app.services import per_app
from app.settings import Settings

FETCH_ROWS = 5_000
CAP_HEADER = "X-Export-Max-Rows"
CSV_HEADER = "ts,driver_id,lon,lat,geohash,speed_kmh,heading\n"
# ts as ISO-8601 UTC with milliseconds; float8 text is the shortest exact form (PG 12+)
_TS = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
CSV_ROW = (
    f"concat_ws(',', {_TS}, driver_id, ST_X(geom), ST_Y(geom), geohash,"
    " coalesce(speed_kmh::text, ''), coalesce(heading::text, ''))"
)
FEATURE_ROW = (
    "json_build_object('type', 'Feature',"
    " 'geometry', json_build_object('type', 'Point',"
    " 'coordinates', json_build_array(ST_X(geom), ST_Y(geom))),"
    f" 'properties', json_build_object('ts', {_TS}, 'driver_id', driver_id,"
    " 'geohash', geohash, 'speed_kmh', speed_kmh, 'heading', heading))::text"
)
SELECT = (
    "SELECT {row} FROM pings WHERE ts >= %(t0)s AND ts < %(t1)s{area}"
    " ORDER BY ts, driver_id LIMIT %(limit)s"
)


def truncation_message(max_rows: int) -> str:
    return (
        f"export stopped at EXPORT_MAX_ROWS={max_rows} rows; more rows match: "
        "narrow the bbox or the time range"
    )


class RowStream:
    """Lines from a server-side cursor; ``close()`` (called by the WSGI server, also on
    a client disconnect) ends the transaction and the connection and frees the slot.

    The session ends itself if the client reads nothing for ``EXPORT_STALL_S`` (idle
    in its transaction that long): the rest of the body then fails, and the lock the
    open cursor held on ``pings`` is gone."""

    def __init__(
        self,
        settings: Settings,
        row_sql: LiteralString,
        area: Area,
        rng: TimeRange,
        slots: threading.BoundedSemaphore,
    ):
        self.max_rows = settings.export_max_rows
        if not slots.acquire(blocking=False):
            raise ServiceUnavailable(
                f"{settings.export_max_concurrent} exports are running here "
                "(EXPORT_MAX_CONCURRENT); try again when one has finished",
                retry_after=10,
            )
        self._slots: threading.BoundedSemaphore | None = slots
        try:
            self.conn = psycopg.connect(
                settings.database_url,
                connect_timeout=5,
                options=api_options(settings, stall_s=settings.export_stall_s),
            )
        except psycopg.OperationalError as exc:
            self._release()
            raise ServiceUnavailable(f"the history database is unavailable: {exc}") from None
        try:
            self.conn.execute("SET TRANSACTION READ ONLY")
            self.cur = self.conn.cursor(name=f"export_{uuid.uuid4().hex[:12]}")
            query = compose(SELECT.replace("{row}", row_sql), area)
            params = range_params(rng, area) | {"limit": self.max_rows + 1}
            self.cur.execute(query, params)
        except BaseException:
            self.close()
            raise
        self.rows = 0
        self.truncated = False

    def batches(self) -> Iterator[list[str]]:
        while True:
            batch = [row[0] for row in self.cur.fetchmany(FETCH_ROWS)]
            if not batch:
                return
            room = self.max_rows - self.rows
            if len(batch) > room:
                batch = batch[:room]
                self.truncated = True
            self.rows += len(batch)
            if batch:
                yield batch
            if self.truncated:
                return

    def close(self) -> None:
        self.conn.close()
        self._release()

    def _release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


class _Body:
    """The response iterable: a generator plus the close() WSGI servers call."""

    def __init__(self, stream: RowStream, chunks: Iterator[str]):
        self.stream = stream
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            yield chunk.encode()

    def close(self) -> None:
        self.stream.close()


def _csv(stream: RowStream) -> Iterator[str]:
    yield CSV_HEADER
    for batch in stream.batches():
        yield "\n".join(batch) + "\n"
    if stream.truncated:
        yield f"# truncated: {truncation_message(stream.max_rows)}\n"


def _geojson(stream: RowStream) -> Iterator[str]:
    yield '{"type":"FeatureCollection","features":[\n'
    first = True
    for batch in stream.batches():
        yield ("" if first else ",\n") + ",\n".join(batch)
        first = False
    tail: dict[str, Any] = {"count": stream.rows, "truncated": stream.truncated}
    if stream.truncated:
        tail |= {"max_rows": stream.max_rows, "message": truncation_message(stream.max_rows)}
    yield "\n]," + json.dumps(tail)[1:] + "\n"


def export_response(settings: Settings, fmt: str, area: Area, rng: TimeRange) -> Response:
    """``fmt`` is "csv" or "geojson" (checked by the caller)."""
    # this process's export slots
    slots = per_app(
        "heatreplay.exports",
        lambda _app: threading.BoundedSemaphore(settings.export_max_concurrent),
    )
    if fmt == "csv":
        stream = RowStream(settings, CSV_ROW, area, rng, slots)
        body, mimetype, ext = _Body(stream, _csv(stream)), "text/csv", "csv"
    else:
        stream = RowStream(settings, FEATURE_ROW, area, rng, slots)
        body, mimetype, ext = _Body(stream, _geojson(stream)), "application/geo+json", "geojson"
    response = Response(body, mimetype=mimetype)
    response.headers[CAP_HEADER] = str(settings.export_max_rows)
    response.headers["Content-Disposition"] = f'attachment; filename="pings.{ext}"'
    response.headers["Cache-Control"] = "no-store"
    return response
