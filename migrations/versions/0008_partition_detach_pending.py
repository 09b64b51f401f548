"""A day partition that retention was detaching comes back when a ping for it arrives.

Retention (app/retention.py) now removes a day with ``ALTER TABLE pings DETACH PARTITION
… CONCURRENTLY`` and then drops the detached table, instead of ``DROP TABLE`` on the
partition: ``DROP`` needs ``pings``' ACCESS EXCLUSIVE lock, and while it waited behind a
long reader every insert and query on ``pings`` queued behind it. A concurrent detach
takes only SHARE UPDATE EXCLUSIVE, which reads and writes pass, and then waits for the
transactions that could still see the day.

If that wait is cut off (retention's lock timeout), the partition is left *detach
pending*: queries no longer see it and a row for that day finds no partition. Retention
completes it on its next run (``FINALIZE``, then ``DROP``). Until then, a late ping for
that day made the sink's COPY fail again and again, since the day's table exists and
``heatreplay_ensure_day_partition`` took that as "made already". The function now puts
such a day back: it completes the detach (``FINALIZE``) and attaches the table again,
rows and all, for retention's next run to drop. A table retention left detached outright
(stopped between its detach and its drop; it marks the table with a comment first) is
attached again the same way. Retention holds the day's advisory lock, the one this
function takes, while it removes a day, so the two never act on one day at once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTION = """
    CREATE OR REPLACE FUNCTION heatreplay_ensure_day_partition(
        day date, geom_index boolean DEFAULT true
    ) RETURNS boolean
    LANGUAGE plpgsql AS $$
    DECLARE
        name text := format('pings_%s', to_char(day, 'YYYYMMDD'));
        lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
        hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
        attached boolean;
        pending boolean;
    BEGIN
        SELECT NOT i.inhdetachpending, i.inhdetachpending INTO attached, pending
        FROM pg_inherits i
        WHERE i.inhrelid = to_regclass(name) AND i.inhparent = 'pings'::regclass;
        IF attached THEN
            RETURN false;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtext(name));
        SELECT NOT i.inhdetachpending, i.inhdetachpending INTO attached, pending
        FROM pg_inherits i
        WHERE i.inhrelid = to_regclass(name) AND i.inhparent = 'pings'::regclass;
        IF attached THEN
            RETURN false;
        END IF;
        IF pending OR obj_description(to_regclass(name), 'pg_class') = '{mark}' THEN
            -- retention's detach of this day was cut off (pending) or stopped before its
            -- drop (its mark): a ping for the day came first, so the day comes back, rows
            -- and all. Retention holds the same advisory lock while it removes a day.
            IF pending THEN
                EXECUTE format('ALTER TABLE pings DETACH PARTITION %I FINALIZE', name);
            END IF;
            EXECUTE format('ALTER TABLE pings ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           name, lo, hi);
            EXECUTE format('COMMENT ON TABLE %I IS NULL', name);
            RETURN true;
        END IF;
        EXECUTE format('CREATE TABLE %I PARTITION OF pings FOR VALUES FROM (%L) TO (%L)',
                       name, lo, hi);
        IF geom_index THEN
            EXECUTE format('CREATE INDEX %I ON %I USING spgist (geom)',
                           name || '_geom_spgist', name);
        END IF;
        RETURN true;
    END $$
"""


# app.retention.MARK, as it was when this revision was written
MARK = "heatreplay retention: detached, to be dropped"


def upgrade() -> None:
    op.execute(FUNCTION.replace("{mark}", MARK))


# 0006's function, as it was (migrations are snapshots)
PREVIOUS = """
    CREATE OR REPLACE FUNCTION heatreplay_ensure_day_partition(
        day date, geom_index boolean DEFAULT true
    ) RETURNS boolean
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


def downgrade() -> None:
    op.execute(PREVIOUS)
