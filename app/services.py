"""Per-process handles the web app shares between requests, created lazily (after
gunicorn forks) and closed at exit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import redis
from flask import Flask, current_app
from psycopg_pool import ConnectionPool, PoolTimeout

from app.db import make_pool
from app.errors import QueryTimeout, ServiceUnavailable
from app.kafka_io import PingProducer
from app.live_counts import LiveCounts
from app.live_hub import LiveHub
from app.settings import Settings


class Services:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.RLock()  # live_hub creates redis under the same lock
        self._producer: PingProducer | None = None
        self._redis: redis.Redis | None = None
        self._pool: ConnectionPool | None = None
        self._live: LiveCounts | None = None
        self._hub: LiveHub | None = None
        self.extras: dict[str, Any] = {}

    @property
    def producer(self) -> PingProducer:
        if self._producer is None:
            with self._lock:
                if self._producer is None:
                    self._producer = PingProducer(self.settings)
        return self._producer

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    # Blocking pool: with a socket per thread (WEB_THREADS of them) a
                    # request waits for a connection instead of failing at the pool's
                    # limit (redis-py's default pool raises past 100 connections).
                    pool = redis.BlockingConnectionPool.from_url(
                        self.settings.redis_url,
                        max_connections=min(self.settings.web_threads + 16, 512),
                        timeout=10,
                        socket_timeout=5,
                        socket_connect_timeout=3,
                        health_check_interval=30,
                    )
                    self._redis = redis.Redis(connection_pool=pool)

        return self._redis

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = make_pool(self.settings)
        return self._pool

    @property
    def live_hub(self) -> LiveHub:
        if self._hub is None:
            with self._lock:
                if self._hub is None:
                    self._hub = LiveHub(self.redis, self.settings)
        return self._hub

    @property
    def live(self) -> LiveCounts:
        if self._live is None:
            self._live = LiveCounts(self.redis, self.settings)
        return self._live

    def close(self) -> None:
        """Idempotent: the app factory also registers it to run at exit."""
        hub, producer, pool, client = self._hub, self._producer, self._pool, self._redis
        self._hub = self._producer = self._pool = self._redis = self._live = None
        if hub is not None:
            hub.stop()
        if producer is not None:
            producer.close()
        if pool is not None:
            pool.close()
        if client is not None:
            client.close()


@contextmanager
def history_connection(timeout_s: float = 10) -> Iterator[psycopg.Connection]:
    """A pooled PostgreSQL connection for one request; an unreachable database is a 503."""
    try:
        with services().pool.connection(timeout=timeout_s) as conn:
            yield conn
    except psycopg.errors.QueryCanceled:
        limit = services().settings.api_statement_timeout_s
        raise QueryTimeout(
            f"the query ran past API_STATEMENT_TIMEOUT_S ({limit:g} s): narrow the time "
            "range or the area"
        ) from None
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise ServiceUnavailable(f"the history database is unavailable: {exc}") from None


T = TypeVar("T")
_per_app_lock = threading.Lock()


def per_app(name: str, make: Callable[[Flask], T]) -> T:
    """The object ``make(app)`` built once for this app (this process), under a lock."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found = app.extensions.get(name)
    if found is None:
        with _per_app_lock:
            found = app.extensions.get(name)
            if found is None:
                found = app.extensions[name] = make(app)
    return found  # type: ignore[no-any-return]


def services() -> Services:
    return current_app.extensions["heatreplay"]  # type: ignore[no-any-return]
