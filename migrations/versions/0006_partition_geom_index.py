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

Downgrade drops the partitions' geometry indexes and restores the partitioned one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.execute("DROP INDEX pings_geom_spgist")
    op.execute(
        """
        DO $$
        DECLARE
            part record;
        BEGIN
            FOR part IN
                SELECT c.relname AS name,
                       to_date(right(c.relname, 8), 'YYYYMMDD') + 1
                           <= (now() AT TIME ZONE 'UTC')::date AS closed
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'pings'::regclass
            LOOP
                IF part.closed THEN
                    EXECUTE format('CREATE INDEX %I ON %I USING gist (geom)',
                                   part.name || '_geom_gist', part.name);
                ELSE
                    EXECUTE format('CREATE INDEX %I ON %I USING spgist (geom)',
                                   part.name || '_geom_spgist', part.name);
                END IF;
            END LOOP;
        END $$
        """
    )
    op.execute("DROP FUNCTION heatreplay_ensure_day_partition(date)")
    op.execute(
        """
        CREATE FUNCTION heatreplay_ensure_day_partition(day date, geom_index boolean DEFAULT true)
        RETURNS boolean
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
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            IF geom_index THEN
                EXECUTE format('CREATE INDEX %I ON %I USING spgist (geom)',
                               name || '_geom_spgist', name);
            END IF;
            RETURN true;
        END $$
        """
    )
    op.execute(
        "COMMENT ON TABLE pings IS 'Every accepted GPS ping, exactly once; partitioned by UTC "
        "day (pings_YYYYMMDD). geohash is precision 8 of (lat, lon). Each day partition has "
        "its own spatial index on geom (SP-GiST from creation, or GiST built once the day "
        "closed when GEOM_INDEX=deferred).'"
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        DECLARE
            idx record;
        BEGIN
            FOR idx IN
                SELECT x.indexrelid::regclass::text AS name
                FROM pg_index x
                JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
                JOIN pg_inherits i ON i.inhrelid = x.indrelid
                WHERE a.attname = 'geom' AND i.inhparent = 'pings'::regclass
            LOOP
                EXECUTE format('DROP INDEX %s', idx.name);
            END LOOP;
        END $$
        """
    )
    op.execute("CREATE INDEX pings_geom_spgist ON pings USING spgist (geom)")
    op.execute("DROP FUNCTION heatreplay_ensure_day_partition(date, boolean)")
    op.execute(
        """
        CREATE FUNCTION heatreplay_ensure_day_partition(day date) RETURNS boolean
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
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            RETURN true;
        END $$
        """
    )
    op.execute(
        "COMMENT ON TABLE pings IS 'Every accepted GPS ping, exactly once; partitioned by UTC "
        "day (pings_YYYYMMDD). geohash is precision 8 of (lat, lon).'"
    )
