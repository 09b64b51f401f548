"""Helpers for the fault tests and bench/soak_faults.py: keyed pings whose identity
survives the trip to PostGIS, worker subprocesses built from a test's Settings, and the
exact comparison of what was accepted with what was stored."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

import psycopg

from app.kafka_io import PingProducer
from app.ping import Ping, encode_wire
from app.settings import ENV_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("TEST_OUTPUT", ROOT / "test-output"))
Key = tuple[str, int]  # (driver_id, ts ms): unique per generated ping


def keyed_pings(count: int, start: int = 0, base_ts: int | None = None) -> list[Ping]:
    """``count`` pings with distinct (driver_id, ts), spread over Lagos; deterministic."""
    base = base_ts if base_ts is not None else int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(start, start + count):
        out.append(
            Ping(
                driver_id=f"k{i % 997:03d}",
                lat=6.40 + (i * 7919 % 10_000) / 40_000,
                lon=3.20 + (i * 104_729 % 10_000) / 25_000,
                ts=base + i,
                speed_kmh=float(i % 90),
            )
        )
    return out


def produce(producer: PingProducer, pings: Iterable[Ping]) -> int:
    """send() returning means the broker acknowledged all of them: they are accepted."""
    return producer.send((p.driver_id.encode(), encode_wire(p)) for p in pings)


def key_of(ping: Ping) -> Key:
    return (ping.driver_id, ping.ts)


@dataclass
class HistoryCheck:
    accepted: int
    rows: int
    distinct: int
    missing: int
    unexpected: int
    duplicates: int
    rollup_pings: int
    rollup_mismatches: int  # minutes or (minute, driver) pairs the rollups get wrong

    @property
    def exact(self) -> bool:
        return (
            self.rows == self.accepted == self.distinct == self.rollup_pings
            and self.missing == self.unexpected == self.duplicates == 0
            and self.rollup_mismatches == 0
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def stored_keys(conn: psycopg.Connection) -> Counter[Key]:
    rows = conn.execute(
        "SELECT driver_id, (extract(epoch FROM ts) * 1000)::bigint FROM pings"
    ).fetchall()
    return Counter((str(d), int(t)) for d, t in rows)


def check_history(conn: psycopg.Connection, accepted: set[Key]) -> HistoryCheck:
    """Compare by key, not by count: which accepted pings are missing, which rows were
    never accepted, and how many rows are second copies."""
    found = stored_keys(conn)
    rollup = conn.execute("SELECT coalesce(sum(pings), 0)::bigint FROM minute_stats").fetchone()
    return HistoryCheck(
        accepted=len(accepted),
        rows=sum(found.values()),
        distinct=len(found),
        missing=len(accepted - found.keys()),
        unexpected=len(found.keys() - accepted),
        duplicates=sum(n - 1 for n in found.values() if n > 1),
        rollup_pings=int(rollup[0]) if rollup else 0,
        rollup_mismatches=rollup_mismatches(conn),
    )


_ROLLUP_MISMATCHES = """
WITH per_minute AS (
    SELECT date_trunc('minute', ts, 'UTC') AS minute, count(*) AS pings,
           count(DISTINCT driver_id) AS drivers
    FROM pings GROUP BY 1
), pairs AS (
    SELECT DISTINCT date_trunc('minute', ts, 'UTC') AS minute, driver_id FROM pings
)
SELECT (SELECT count(*) FROM per_minute p FULL JOIN minute_stats s ON s.minute = p.minute
        WHERE p.pings IS DISTINCT FROM s.pings OR p.drivers IS DISTINCT FROM s.drivers)
     + (SELECT count(*) FROM pairs p FULL JOIN driver_minutes d
        ON d.minute = p.minute AND d.driver_id = p.driver_id
        WHERE p.driver_id IS NULL OR d.driver_id IS NULL)
"""


def rollup_mismatches(conn: psycopg.Connection) -> int:
    """The rollups recomputed from ``pings`` against the stored ones: 0 when exact."""
    row = conn.execute(_ROLLUP_MISMATCHES).fetchone()
    return int(row[0]) if row else -1


def row_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pings").fetchone()
    return int(row[0]) if row else 0


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment a `heatreplay` subprocess needs to act as this test's worker."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    for name, attr in ENV_NAMES.items():
        value = getattr(settings, attr)
        if value is None:
            continue
        env[name] = str(value).lower() if isinstance(value, bool) else str(value)
    env["HEATREPLAY_ENV"] = "test"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


class Worker:
    """`python -m app.cli <command>` as a real process that can be SIGKILLed."""

    def __init__(self, command: str, settings: Settings, log_name: str, **env: str):
        self.command = command
        self.env = worker_env(settings, **env)
        OUTPUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUTPUT / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Worker:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", self.command],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def log_count(self, text: str) -> int:
        """How many lines of this worker's log (all its runs) contain ``text``."""
        if not self.log_path.exists():
            return 0
        with open(self.log_path, "rb") as log:
            return sum(1 for line in log if text.encode() in line)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None and self.alive, f"{self.command} died on its own"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reap()

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait; the exit code (the test asserts a clean 0)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.command} ignored SIGTERM for {timeout}s") from None
        finally:
            self._reap()
        return code

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        if self.alive and self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()


def chunks(pings: list[Ping], size: int) -> Iterator[list[Ping]]:
    for i in range(0, len(pings), size):
        yield pings[i : i + size]


def stored_position(conn: psycopg.Connection, settings: Settings) -> int:
    """Sum of the sink's next offsets in PostgreSQL: messages it has taken care of."""
    row = conn.execute(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets "
        "WHERE consumer_group = %s AND topic = %s",
        (settings.group_sink, settings.topic_pings),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass
class KillSoak:
    pings_sent: int = 0
    kills: int = 0
    kills_with_backlog: int = 0
    seconds: float = 0.0
    clean_exit_code: int | None = None


def kill_soak(
    settings: Settings,
    conn: psycopg.Connection,
    total: int,
    kills: int,
    seed: int,
    chunk: int = 5000,
    produce_s: float | None = None,
) -> tuple[KillSoak, set[Key]]:
    """Produce ``total`` keyed pings over about ``produce_s`` seconds while a real sink
    process is SIGKILLed ``kills`` times at random moments (each after it has written at
    least one batch), then let a last sink catch up and stop it with SIGTERM. The pings
    travel in the form ``settings.kafka_pings_per_message`` asks for (app/wire.py).

    The feed lasts (by default 6 s per kill) longer than the kills take - a restart, a
    group join, a first batch: 2-5 s each - so every restarted sink has pings to write;
    a sink faster than the feed would otherwise find everything written already."""
    if produce_s is None:
        produce_s = 6.0 * kills
    rng = random.Random(seed)
    result = KillSoak()
    accepted: set[Key] = set()
    failure: list[BaseException] = []
    producer = PingProducer(settings)
    batches = list(chunks(keyed_pings(total), chunk))
    pause = produce_s / max(1, len(batches))

    def feed() -> None:
        try:
            for batch in batches:
                producer.send_pings(batch)  # returns only once the broker acknowledged
                accepted.update(key_of(p) for p in batch)
                result.pings_sent += len(batch)
                time.sleep(pause)
        except BaseException as exc:
            failure.append(exc)

    started = time.monotonic()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    sink = Worker("sink", settings, f"sink-{settings.group_sink}.log")
    try:
        for _ in range(kills):
            before = stored_position(conn, settings)
            sink.start()
            deadline = time.monotonic() + 30
            while stored_position(conn, settings) == before:
                assert time.monotonic() < deadline, "restarted sink wrote nothing in 30s"
                assert sink.alive, "sink exited on its own"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            if result.pings_sent > row_count(conn):
                result.kills_with_backlog += 1
            sink.kill9()
            result.kills += 1
        feeder.join(120)
        assert not feeder.is_alive() and not failure, failure
        assigned = sink.log_count("sink assigned")
        sink.start()
        deadline = time.monotonic() + 60
        while row_count(conn) < total:
            assert time.monotonic() < deadline, "the last sink did not catch up in 60s"
            time.sleep(0.1)
        # the killed sink may have written everything already: stop the last one only
        # once it runs (a SIGTERM during interpreter start-up is not a clean stop)
        while sink.log_count("sink assigned") == assigned:
            assert time.monotonic() < deadline, "the last sink was never assigned"
            assert sink.alive, "sink exited on its own"
            time.sleep(0.05)
        result.clean_exit_code = sink.terminate()
    finally:
        sink.cleanup()
        producer.close()
    result.seconds = time.monotonic() - started
    return result, accepted
