"""Real faults against a real sink process: SIGKILL at random moments while pings flow,
and PostgreSQL cutting the sink's connections mid-stream. PostGIS must end up holding
exactly the accepted pings, compared by key."""

from __future__ import annotations

import json
import os
import threading
import time

import psycopg

from app.kafka_io import PingProducer
from app.postgis_sink import SINK_APPLICATION_NAME, PostgisSink
from tests.conftest import wait_until
from tests.faults import (
    OUTPUT,
    check_history,
    chunks,
    key_of,
    keyed_pings,
    kill_soak,
    produce,
    row_count,
    stored_position,
)
from tests.test_sink_offsets import kafka_committed, stored_offsets

PINGS = int(os.environ.get("FAULT_PINGS", "200000"))
KILLS = int(os.environ.get("FAULT_KILLS", "5"))
SEED = int(os.environ.get("FAULT_SEED", "6"))


def cut_sink_connections(db) -> int:
    """PostgreSQL ends every sink connection to this database; returns how many."""
    row = db.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        (SINK_APPLICATION_NAME,),
    ).fetchone()
    return int(row[0])


def test_sigkill_the_sink_repeatedly_loses_and_doubles_nothing(settings, db):
    # short sessions so a restarted member is assigned soon after its killed predecessor
    s = settings.with_(kafka_session_timeout_ms=2000, sink_batch_wait_s=0.2)
    soak, accepted = kill_soak(s, db, PINGS, KILLS, SEED)
    check = check_history(db, accepted)
    figures = {**soak.__dict__, **check.as_dict()}
    print("sink kill soak:", json.dumps(figures))
    (OUTPUT / "faults_sink_kill.json").write_text(json.dumps(figures, indent=1))
    assert soak.pings_sent == PINGS and soak.kills == KILLS
    assert soak.kills_with_backlog >= 1  # at least one kill landed with pings unwritten
    assert check.exact, figures
    # SIGTERM: the last batch finished, offsets committed to Kafka too, exit code 0
    assert soak.clean_exit_code == 0
    assert kafka_committed(s) == stored_offsets(db, s)


def test_sigkill_the_sink_reading_batched_messages_loses_and_doubles_nothing(settings, db):
    """The same with KAFKA_PINGS_PER_MESSAGE=100: a message is 100 rows, written whole
    or not at all, and the offset fence still holds."""
    # requests of 1,000 pings every ~0.2 s and sink batches of up to 5,000: the sink,
    # faster with arrays, is mostly waiting on a batch it has begun, so kills land with
    # pings unwritten (with 5,000-ping requests ~1 kill in 3 did)
    s = settings.with_(
        kafka_session_timeout_ms=2000,
        sink_batch_wait_s=0.2,
        sink_batch_max=5_000,
        kafka_pings_per_message=100,
    )
    soak, accepted = kill_soak(s, db, PINGS // 2, 3, SEED, chunk=1_000)
    check = check_history(db, accepted)
    figures = {**soak.__dict__, **check.as_dict()}
    print("sink kill soak, batched messages:", json.dumps(figures))
    assert soak.pings_sent == PINGS // 2 and soak.kills == 3
    assert soak.kills_with_backlog >= 1
    assert check.exact, figures
    assert soak.clean_exit_code == 0
    assert kafka_committed(s) == stored_offsets(db, s)
    # it did travel batched: far fewer messages than pings
    assert 0 < sum(stored_offsets(db, s).values()) <= PINGS // 2 // 50


def test_postgres_cutting_the_sink_off_mid_stream_loses_nothing(settings, db, run_in_background):
    sink = PostgisSink(settings.with_(sink_batch_max=2000))
    run_in_background(sink)
    producer = PingProducer(settings)
    pings = keyed_pings(40_000)
    accepted: set = set()
    stop_feed = threading.Event()

    def feed() -> None:
        # ~8 s of steady flow (small chunks), so the cuts land while the sink has work:
        # an idle sink holds no connection to cut
        for batch in chunks(pings, 250):
            produce(producer, batch)
            accepted.update(key_of(p) for p in batch)
            if stop_feed.wait(0.05):
                return

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    wait_until(lambda: stored_position(db, settings) > 0, timeout=30)
    cuts = 0
    while cuts < 4 and feeder.is_alive():
        cuts += cut_sink_connections(db)
        time.sleep(0.3)
    assert cuts == 4, f"only {cuts} sink connections cut while pings flowed"
    feeder.join(60)
    assert not feeder.is_alive()
    wait_until(lambda: stored_position(db, settings) >= len(pings), timeout=60)
    sink.stop.set()
    check = check_history(db, accepted)
    print("pg cuts:", cuts, "retries:", sink.stats.db_retries, check.as_dict())
    assert check.exact, check.as_dict()
    assert sink.stats.db_retries >= 1
    producer.close()


def test_a_sink_that_lost_its_connection_writes_its_rollup_pairs_again(
    settings, db, run_in_background
):
    """The sink skips (minute, driver) pairs it remembers writing. After a lost
    connection it may be talking to a server without them (a restore, a fail-over to a
    lagging standby), so it forgets and lets the key decide."""
    sink = PostgisSink(settings.with_(sink_batch_wait_s=0.2))
    run_in_background(sink)
    producer = PingProducer(settings)
    minute = (int(time.time() * 1000) - 120_000) // 60_000 * 60_000
    first = keyed_pings(50, base_ts=minute)
    produce(producer, first)
    wait_until(lambda: stored_position(db, settings) >= 50, timeout=30)
    assert db.execute("SELECT count(*) FROM driver_minutes").fetchone()[0] == 50
    db.execute("DELETE FROM driver_minutes")  # the pairs the sink remembers are gone
    assert cut_sink_connections(db) == 1
    # the same 50 drivers again, later in the same minute
    produce(producer, keyed_pings(50, start=0, base_ts=minute + 1_000))
    wait_until(lambda: stored_position(db, settings) >= 100, timeout=30)
    sink.stop.set()
    producer.close()
    assert sink.stats.db_retries >= 1
    assert db.execute("SELECT count(*) FROM driver_minutes").fetchone()[0] == 50


def test_a_batch_given_up_on_stop_is_not_passed_over_by_the_one_behind_it(
    settings, db, run_in_background
):
    """Stop during an outage gives up the batch being written (its offsets were never
    stored: the next run reads it again). The batch collected behind it must not be
    written then, or its offsets would pass over the one given up and lose it."""
    s = settings.with_(sink_batch_max=500, sink_batch_wait_s=2.0)
    producer = PingProducer(s)
    pings = keyed_pings(1000)
    assert produce(producer, pings) == 1000
    producer.close()
    with psycopg.connect(s.database_url) as blocker:
        blocker.execute("LOCK TABLE sink_offsets IN SHARE MODE")  # reads pass, writes wait
        sink = PostgisSink(s)
        background = run_in_background(sink)
        wait_until(lambda: sink.stats.batches_collected == 2, timeout=30)
        sink.stop.set()
        assert cut_sink_connections(db) == 1  # the write waiting on the lock fails
        time.sleep(0.5)
        blocker.rollback()  # a batch the writer still took would be written now
        background.stop()
    assert (sink.stats.abandoned_batches, sink.stats.batches) == (1, 0)
    assert row_count(db) == 0
    resumed = PostgisSink(s)
    run_in_background(resumed)
    wait_until(lambda: row_count(db) >= 1000, timeout=30)
    resumed.stop.set()
    check = check_history(db, {key_of(p) for p in pings})
    assert check.exact, check.as_dict()
