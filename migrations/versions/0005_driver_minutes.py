"""ping_minutes becomes driver_minutes: which drivers pinged in which minute, written once.

Until now every sink batch upserted one ``ping_minutes`` row per (minute, driver) it held
to add to that driver's ping count. Most of those rows existed already (a driver pings
many times a minute), so every ping paid a tuple lock and an in-place update: 3.9-4.2 us
of PostgreSQL CPU per ping, as much as storing the ping itself (docs/performance.md,
fifth round). The timeline and the peak search only ever needed *which* drivers were
active in a minute (distinct drivers over several minutes); the pings per minute are in
``minute_stats`` and per driver in ``pings``. So the table keeps the pair only, the sink
writes a pair once (``ON CONFLICT DO NOTHING``, and it does not even send the pairs it
already wrote, replay/rollups.py) and the half-empty pages of 0004 are not needed.

Downgrade recounts the pings per driver per minute from ``pings``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ping_minutes RENAME TO driver_minutes")
    op.execute("ALTER INDEX ping_minutes_pkey RENAME TO driver_minutes_pkey")
    op.execute("ALTER TABLE driver_minutes DROP COLUMN pings")
    op.execute("ALTER TABLE driver_minutes RESET (fillfactor)")
    op.execute(
        "COMMENT ON TABLE driver_minutes IS 'Rollup: the drivers that pinged in each UTC "
        "minute, written in the same transaction as the pings (pings per minute: "
        "minute_stats).'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE driver_minutes ADD COLUMN pings integer NOT NULL DEFAULT 0")
    op.execute(
        """
        UPDATE driver_minutes dm SET pings = c.n
        FROM (SELECT date_trunc('minute', ts, 'UTC') AS minute, driver_id, count(*) AS n
              FROM pings GROUP BY 1, 2) AS c
        WHERE c.minute = dm.minute AND c.driver_id = dm.driver_id
        """
    )
    op.execute("ALTER TABLE driver_minutes ALTER COLUMN pings DROP DEFAULT")
    op.execute("ALTER TABLE driver_minutes SET (fillfactor = 50)")
    op.execute("ALTER INDEX driver_minutes_pkey RENAME TO ping_minutes_pkey")
    op.execute("ALTER TABLE driver_minutes RENAME TO ping_minutes")
    op.execute(
        "COMMENT ON TABLE ping_minutes IS 'Rollup: pings per driver per UTC minute, written "
        "in the same transaction as the pings it counts.'"
    )
