"""History schema: PostGIS, day-partitioned pings, minute rollup, sink offsets.

Index choice, measured on this 2-core machine (binary COPY of 1M rows into an empty
table; `bench/index_cost.sh` reproduces it): no index 0.85 s, BRIN(ts) 0.89 s,
btree(ts) 2.0 s, btree(ts) INCLUDE (driver_id, geohash) 3.1 s, + btree(driver_id, ts)
6.5 s, btree(ts) + GiST(geom) 7.5 s, BRIN(ts) + SP-GiST(geom) 4.3 s, all three with
GiST 12.7 s. Ingest is bound by index upkeep, so:
- BRIN (ts): pings arrive nearly in time order per day partition, so block ranges prune
  time slices (replay windows, timelines, exports) almost as well as a btree, at ~no cost.
- SP-GiST (geom): the spatial index analysts need (polygon / radius filters), ~35 %
  cheaper to maintain than GiST for points.
- no (driver_id, ts) btree kept up by ingest: it alone halves ingest; a driver's path
  reads its time range through BRIN. (Since then each day gets one built in a sorted
  pass once it has closed: app/driver_index.py.)

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.execute(
        """
        CREATE TABLE pings (
            ts        timestamptz NOT NULL,
            driver_id text        NOT NULL,
            geom      geometry(Point, 4326) NOT NULL,
            geohash   text        NOT NULL,
            speed_kmh real,
            heading   real
        ) PARTITION BY RANGE (ts)
        """
    )
    op.execute(
        "CREATE INDEX pings_ts_brin ON pings USING brin (ts) WITH (pages_per_range = 16)"
    )
    op.execute("CREATE INDEX pings_geom_spgist ON pings USING spgist (geom)")
    op.execute(
        "COMMENT ON TABLE pings IS 'Every accepted GPS ping, exactly once; partitioned by UTC "
        "day (pings_YYYYMMDD). geohash is precision 8 of (lat, lon).'"
    )
    # one partition per UTC day, created on demand by the sink and ahead of time by
    # `heatreplay migrate`; returns true when it created one
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
        """
        CREATE TABLE ping_minutes (
            minute    timestamptz NOT NULL,
            driver_id text        NOT NULL,
            pings     integer     NOT NULL,
            PRIMARY KEY (minute, driver_id)
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE ping_minutes IS 'Rollup: pings per driver per UTC minute, written "
        "in the same transaction as the pings it counts.'"
    )
    op.execute(
        """
        CREATE TABLE sink_offsets (
            consumer_group text    NOT NULL,
            topic          text    NOT NULL,
            partition      integer NOT NULL,
            next_offset    bigint  NOT NULL,
            updated_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, partition)
        )
        """
    )
    op.execute(
        "COMMENT ON TABLE sink_offsets IS 'Next Kafka offset per partition the PostGIS sink "
        "will write; updated in the same transaction as the rows (exactly-once history).'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS sink_offsets")
    op.execute("DROP TABLE IF EXISTS ping_minutes")
    op.execute("DROP FUNCTION IF EXISTS heatreplay_ensure_day_partition(date)")
    op.execute("DROP TABLE IF EXISTS pings CASCADE")
