"""ping_minutes leaves half of each page free, so the sink's upserts update in place.

Every batch upserts one row per (minute, driver) it holds, and most of those rows exist
already (a driver pings many times a minute): the UPDATE path. With free room on the
page PostgreSQL makes it a HOT update (the new row version stays on the page, no new
primary-key entry). Measured with the sink's own rollup SQL, 20,000 drivers, backend
CPU per ping: 3.43 -> 2.73 us at 10,000-ping batches, 2.43 -> 1.93 us at 30,000
(docs/performance.md). The table is small (one row per driver-minute), so the room
costs little disk. Existing pages keep their layout until rewritten; new pages follow.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ping_minutes SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE ping_minutes RESET (fillfactor)")
