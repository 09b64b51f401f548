"""Fixtures on real servers: PostgreSQL+PostGIS and Redis (already running, or from
DATABASE_URL / REDIS_URL), and a Kafka-protocol broker — the embedded Tansu started
once per session on a free loopback port, or TEST_KAFKA_BOOTSTRAP if set.

Every test gets its own topics, consumer groups and Redis prefix; every run its own
database (created, migrated, dropped), so runs and tests never see each other's data.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app import create_app
from app.auth import mint_token
from app.broker import start_embedded_broker
from app.db import ensure_database, migrate
from app.kafka_io import delete_topics, ensure_topics
from app.settings import Settings, load_settings
from bench.stack import free_port  # one picker for tests and benches (never a port twice)

OUTPUT = Path(os.environ.get("TEST_OUTPUT", "test-output"))


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP"}}
    env["HEATREPLAY_ENV"] = "test"
    return load_settings(env, dotenv=None)


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: Settings) -> Iterator[str]:
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT / "broker.log", "ab") as log:
        proc = start_embedded_broker(base_settings.with_(kafka_bootstrap=bootstrap), log)
    yield bootstrap
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def database_url(base_settings: Settings) -> Iterator[str]:
    name = f"hr_test_{uuid.uuid4().hex[:10]}"
    admin = make_conninfo(base_settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(base_settings.database_url, dbname=name)
    migrate(base_settings.with_(database_url=url))
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def scratch(base_settings: Settings) -> Iterator[Settings]:
    """A database of its own, created empty (no schema) and dropped after the test."""
    name = f"hr_migr_{uuid.uuid4().hex[:8]}"
    s = base_settings.with_(database_url=make_conninfo(base_settings.database_url, dbname=name))
    ensure_database(s)
    yield s
    admin = make_conninfo(base_settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(
    base_settings: Settings, kafka_bootstrap: str, database_url: str
) -> Iterator[Settings]:
    """Fresh topics, groups and Redis prefix for one test; tables emptied."""
    tag = uuid.uuid4().hex[:8]
    s = base_settings.with_(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_pings=f"pings-{tag}",
        topic_dlq=f"pings-{tag}.dlq",
        topic_partitions=2,
        group_live=f"live-{tag}",
        group_sink=f"sink-{tag}",
        redis_prefix=f"t{tag}",
        sink_batch_wait_s=0.2,
        live_batch_wait_s=0.1,
        produce_timeout_s=5.0,
        live_window_s=10.0,
        # SPEC's message form whatever the environment says (a bench may export
        # KAFKA_PINGS_PER_MESSAGE); the tests of the batched form set it themselves
        kafka_pings_per_message=1,
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE pings, driver_minutes, minute_stats, sink_offsets")
    ensure_topics(s)
    yield s
    client = redis.Redis.from_url(s.redis_url)
    # every key of this test's prefix (SCAN is fine in test cleanup, never on a hot path)
    keys = list(
        client.scan_iter(match=s.redis_key_prefix.replace("{", "\\{").replace("}", "\\}") + "*")
    )
    if keys:
        client.delete(*keys)
    client.close()
    delete_topics(s, [s.topic_pings, s.topic_dlq])


@pytest.fixture
def app(settings: Settings) -> Any:
    application = create_app(settings)
    yield application
    application.extensions["heatreplay"].close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def ingest_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, 'ingest')}"}


@pytest.fixture
def viewer_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


class Background:
    """Runs a worker object (with ``.stop`` and ``.run()``) in a thread."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> Background:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self.worker.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error:
            raise self.error


@pytest.fixture
def run_in_background() -> Iterator[Callable[[Any], Background]]:
    started: list[Background] = []

    def start(worker: Any) -> Background:
        bg = Background(worker).start()
        started.append(bg)
        return bg

    yield start
    for bg in started:
        if bg.thread.is_alive():
            bg.worker.stop.set()
            bg.thread.join(30)


def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail with a clear message after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def read_topic(settings: Settings, topic: str, timeout: float = 15) -> list[Any]:
    """Every message currently in ``topic`` (all partitions, from the beginning)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        parts = []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                parts.append(TopicPartition(topic, p, low))
        if not parts:
            return []
        consumer.assign(parts)
        out: list[Any] = []
        # Tansu's reported end offsets can trail by a producer batch: read past them
        # until the topic has been quiet for a second.
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(num_messages=5000, timeout=0.2) if not m.error()]
            out += batch
            for msg in batch:
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
            if batch:
                quiet_since = time.monotonic()
            elif not ends and time.monotonic() - quiet_since > 1.0:
                break
        assert not ends, f"could not read to the end of {topic}: {ends}"
        return out
    finally:
        consumer.close()


class ServedApp:
    """A Flask app served by a real threaded HTTP server on a free loopback port."""

    def __init__(self, app: Any):
        from werkzeug.serving import make_server

        self.app = app
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def served(app: Any) -> Iterator[ServedApp]:
    server = ServedApp(app)
    yield server
    server.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One Debian Chromium for every browser test (tests/browser_fixtures.py)."""
    from tests.browser_fixtures import launch_browser

    yield from launch_browser()
