"""The analysis views bucket by UTC hour and minute whatever the session's time zone.

0003 grouped ``pings`` by ``date_trunc('hour', ts)``, which truncates in the session's
``TimeZone``: an analyst whose session runs at +05:30 (or +03:30, +05:45, ...) got hours
starting at :30 UTC, and the documented ``WHERE hour = '2026-11-20 12:00Z'`` found
nothing. ``date_trunc(field, ts, 'UTC')`` truncates in UTC, as the views' comments and
docs/sql.md say. Same columns and types, so the views are replaced in place and keep
their grants and comments.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CELL_MINUTES = """
    CREATE OR REPLACE VIEW cell_minutes AS
    SELECT date_trunc('minute', ts{tz})   AS minute,
           left(geohash, 6)           AS cell,
           count(*)::integer          AS pings,
           count(DISTINCT driver_id)::integer AS drivers
    FROM pings
    GROUP BY 1, 2
"""
DRIVER_TRACKS_HOURLY = """
    CREATE OR REPLACE VIEW driver_tracks_hourly AS
    SELECT driver_id,
           date_trunc('hour', ts{tz}) AS hour,
           count(*)::integer      AS pings,
           min(ts)                AS first_ts,
           max(ts)                AS last_ts,
           CASE WHEN count(*) >= 2
                THEN ST_MakeLine(geom ORDER BY ts, geohash)
           END::geometry(LineString, 4326) AS track
    FROM pings
    GROUP BY driver_id, date_trunc('hour', ts{tz})
"""
CELL_HOUR_RANK = """
    CREATE OR REPLACE VIEW cell_hour_rank AS
    SELECT hour, cell, pings, drivers,
           rank() OVER (PARTITION BY hour ORDER BY pings DESC)::integer AS rank
    FROM (
        SELECT date_trunc('hour', ts{tz}) AS hour,
               left(geohash, 6)       AS cell,
               count(*)::integer      AS pings,
               count(DISTINCT driver_id)::integer AS drivers
        FROM pings
        GROUP BY 1, 2
    ) per_cell
"""
VIEWS = (CELL_MINUTES, DRIVER_TRACKS_HOURLY, CELL_HOUR_RANK)


def upgrade() -> None:
    for view in VIEWS:
        op.execute(view.format(tz=", 'UTC'"))


def downgrade() -> None:
    for view in VIEWS:
        op.execute(view.format(tz=""))
