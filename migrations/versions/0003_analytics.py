"""Analytics: a read-only analyst role and views made for analysis (docs/sql.md).

- `heatreplay_analyst`: a NOLOGIN group role with USAGE on the schema and SELECT on
  every table and view, now and later: default privileges cover the day partitions
  `heatreplay_ensure_day_partition` creates afterwards (they are owned by the migrating
  user, who is the role the default privileges are declared FOR). Analysts log in as
  their own LOGIN role that is a member of it (`CREATE ROLE alice LOGIN PASSWORD '...'
  IN ROLE heatreplay_analyst`), so they can read the history but never change it.
- Roles are cluster-wide while grants are per database, so several databases (test
  runs, staging) may share the role: upgrade creates it only if missing, downgrade
  drops it only when no other database still holds privileges for it.
- Views (plain, not materialised, so they are never stale): `cell_minutes`,
  `driver_tracks_hourly`, `cell_hour_rank`. They group by derived times, so a filter
  on `minute`/`hour` cannot prune partitions; for long histories filter `pings.ts`
  directly (the docs show both).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROLE = "heatreplay_analyst"
VIEWS = ("cell_hour_rank", "driver_tracks_hourly", "cell_minutes")


def upgrade() -> None:
    # duplicate_object / unique_violation: another database's migration created it
    # between our check and our CREATE (roles are shared by the whole cluster)
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END $$
        """
    )
    op.execute(f"COMMENT ON ROLE {ROLE} IS 'heatreplay: read-only access to the history'")
    op.execute(
        """
        CREATE VIEW cell_minutes AS
        SELECT date_trunc('minute', ts)   AS minute,
               left(geohash, 6)           AS cell,
               count(*)::integer          AS pings,
               count(DISTINCT driver_id)::integer AS drivers
        FROM pings
        GROUP BY 1, 2
        """
    )
    op.execute(
        "COMMENT ON VIEW cell_minutes IS 'Pings and distinct drivers per UTC minute per "
        "geohash-6 cell (about 1.2 x 0.6 km).'"
    )
    op.execute(
        """
        CREATE VIEW driver_tracks_hourly AS
        SELECT driver_id,
               date_trunc('hour', ts) AS hour,
               count(*)::integer      AS pings,
               min(ts)                AS first_ts,
               max(ts)                AS last_ts,
               CASE WHEN count(*) >= 2
                    THEN ST_MakeLine(geom ORDER BY ts, geohash)
               END::geometry(LineString, 4326) AS track
        FROM pings
        GROUP BY driver_id, date_trunc('hour', ts)
        """
    )
    op.execute(
        "COMMENT ON VIEW driver_tracks_hourly IS 'Each driver''s pings per UTC hour joined "
        "in time order as a LineString (NULL when the hour holds a single ping).'"
    )
    op.execute(
        """
        CREATE VIEW cell_hour_rank AS
        SELECT hour, cell, pings, drivers,
               rank() OVER (PARTITION BY hour ORDER BY pings DESC)::integer AS rank
        FROM (
            SELECT date_trunc('hour', ts) AS hour,
                   left(geohash, 6)       AS cell,
                   count(*)::integer      AS pings,
                   count(DISTINCT driver_id)::integer AS drivers
            FROM pings
            GROUP BY 1, 2
        ) per_cell
        """
    )
    op.execute(
        "COMMENT ON VIEW cell_hour_rank IS 'Geohash-6 cells ranked by pings within each "
        "UTC hour (rank 1 = busiest; ties share a rank).'"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}")
    # tables created later by this same user (day partitions, later revisions)
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER IN SCHEMA public "
        f"GRANT SELECT ON TABLES TO {ROLE}"
    )


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE CURRENT_USER IN SCHEMA public "
        f"REVOKE SELECT ON TABLES FROM {ROLE}"
    )
    # DROP OWNED in the current database only removes this database's grants
    op.execute(f"DROP OWNED BY {ROLE}")
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (
                SELECT 1 FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
                WHERE r.rolname = '{ROLE}'
                  AND d.dbid <> (SELECT oid FROM pg_database WHERE datname = current_database())
            ) THEN
                DROP ROLE IF EXISTS {ROLE};
            END IF;
        END $$
        """
    )
