"""Replay rollups: exact pings and distinct drivers per UTC minute.

``ping_minutes`` (0001) holds one row per (minute, driver). ``minute_stats`` holds per
minute the number of pings and of distinct drivers, kept exact by the sink in the same
transaction as the rows: its upsert into ``ping_minutes`` returns ``xmax = 0`` for rows
it created, i.e. for drivers new to that minute (replay/rollups.py). The activity strip
and the peak search then read ~1,440 rows per day instead of the day's pings.

Frames need no rollup: a frame is the latest ping per driver in (t - W, t], which the
BRIN(ts) index of one day partition finds in a few thousand rows (docs/replay.md has the
figures), independent of how many days of history there are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE minute_stats (
            minute  timestamptz PRIMARY KEY,
            pings   bigint  NOT NULL,
            drivers integer NOT NULL
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE minute_stats IS 'Rollup: pings and distinct drivers per UTC minute, "
        "written in the same transaction as the pings it counts (replay timeline, peaks).'"
    )
    # history written before this revision
    op.execute(
        "INSERT INTO minute_stats (minute, pings, drivers) "
        "SELECT minute, sum(pings), count(*) FROM ping_minutes GROUP BY minute"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS minute_stats")
