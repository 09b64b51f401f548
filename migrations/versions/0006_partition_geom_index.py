"""The spatial index belongs to each day partition, so a day may get it once it closes.

Until now ``pings`` carried one partitioned SP-GiST index on ``geom``, so every day
partition had it from creation and every ping paid its upkeep. That upkeep grows with the
day: the PostgreSQL backend's CPU per row of a sink-like COPY went 4.4 us at 1M rows in
the partition, 8.8 at 5M and 12.3 at 12M, while BRIN(ts) alone stayed ~1.0 at any size;
a GiST index built afterwards in one sorted pass cost 1.6 us per row (12M rows in 20 s)
against 6.5 for an SP-GiST build (`python -m bench.index_growth`, docs/performance.md,
twelfth round). A partitioned index cannot leave out some partitions, so:

- the parent's ``pings_geom_spgist`` goes; every existing partition gets its own index
  (GiST, built sorted, for days already closed; SP-GiST for today and the days ahead,
  which still take inserts);
- ``heatreplay_ensure_day_partition(day, geom_index DEFAULT true)`` creates a partition
  with its SP-GiST index (``GEOM_INDEX=immediate``, SPEC's contract) or without one
  (``deferred``: the sink builds a GiST index once the day has closed, app/geom_index.py).

The partitions' indexes are built ``CONCURRENTLY`` before the parent's goes, so ingest
and queries go on during the upgrade on a long history; dropping the parent's then takes
its lock only for a moment. Downgrade restores the partitioned index the same way: the
parent's is created ``ON ONLY pings``, each day's SP-GiST index (built concurrently where
missing) is attached to it, and the GiST ones are dropped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

import sys

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# partitions of pings, and whether each one's day has ended (UTC); a partition named
# otherwise than pings_YYYYMMDD counts as open
_PARTITIONS = text(
    """
    SELECT c.relname,
           c.relname ~ '^pings_[0-9]{8}$'
           AND to_date(right(c.relname, 8), 'YYYYMMDD') + 1 <= (now() AT TIME ZONE 'UTC')::date
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'pings'::regclass
    ORDER BY 1
    """
)

FUNCTION = """
    CREATE FUNCTION heatreplay_ensure_day_partition(day date{param}) RETURNS boolean
    LANGUAGE plpgsql AS $$
    DECLARE
        name text := format('pings_%s', to_char(day, 'YYYYMMDD'));
    BEGIN
        IF to_regclass(name) IS NOT NULL THEN
            RETURN false;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtext(name));
        IF to_regclass(name) IS NOT NULL THEN
            RETURN false;
        END IF;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF pings FOR VALUES FROM (%L) TO (%L)',
            name, (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC'));{index}
        RETURN true;
    END $$
"""
WITH_INDEX = """
        IF geom_index THEN
            EXECUTE format('CREATE INDEX %I ON %I USING spgist (geom)',
                           name || '_geom_spgist', name);
        END IF;"""


def upgrade() -> None:
    partitions = op.get_bind().execute(_PARTITIONS).fetchall()
    with op.get_context().autocommit_block():
        for n, (name, closed) in enumerate(partitions, 1):
            method = "gist" if closed else "spgist"
            # progress: on a long history each day's build takes a while
            print(f"0006: {method} index on {name} ({n}/{len(partitions)})", file=sys.stderr)
            op.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}_geom_{method}" '
                f'ON "{name}" USING {method} (geom)'
            )
    op.execute("DROP INDEX pings_geom_spgist")
    op.execute("DROP FUNCTION heatreplay_ensure_day_partition(date)")
    op.execute(FUNCTION.format(param=", geom_index boolean DEFAULT true", index=WITH_INDEX))
    op.execute(
        "COMMENT ON TABLE pings IS 'Every accepted GPS ping, exactly once; partitioned by UTC "
        "day (pings_YYYYMMDD). geohash is precision 8 of (lat, lon). Each day partition has "
        "its own spatial index on geom (SP-GiST from creation, or GiST built once the day "
        "closed when GEOM_INDEX=deferred).'"
    )


def downgrade() -> None:
    bind = op.get_bind()
    partitions = [name for name, _ in bind.execute(_PARTITIONS).fetchall()]
    op.execute("CREATE INDEX pings_geom_spgist ON ONLY pings USING spgist (geom)")
    with op.get_context().autocommit_block():
        for name in partitions:
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}_geom_gist"')
            op.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}_geom_spgist" '
                f'ON "{name}" USING spgist (geom)'
            )
    for name in partitions:
        op.execute(f'ALTER INDEX pings_geom_spgist ATTACH PARTITION "{name}_geom_spgist"')
    op.execute("DROP FUNCTION heatreplay_ensure_day_partition(date, boolean)")
    op.execute(FUNCTION.format(param="", index=""))
    op.execute(
        "COMMENT ON TABLE pings IS 'Every accepted GPS ping, exactly once; partitioned by UTC "
        "day (pings_YYYYMMDD). geohash is precision 8 of (lat, lon).'"
    )
