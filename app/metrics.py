"""Counters shared by every web process and worker: one Redis hash per prefix, so
/metrics is the same whichever gunicorn worker or host answers it."""

from __future__ import annotations

import logging
from typing import Protocol

import redis

log = logging.getLogger(__name__)


class HasRedis(Protocol):
    @property
    def redis(self) -> redis.Redis: ...

    @property
    def settings(self) -> object: ...


def stats_key(prefix: str) -> str:
    return prefix + "stats"


def incr(client: redis.Redis, prefix: str, counts: dict[str, int | float]) -> None:
    """Best effort: a metrics write must never fail a request or a batch."""
    try:
        pipe = client.pipeline(transaction=False)
        for name, value in counts.items():
            if isinstance(value, float):
                pipe.hincrbyfloat(stats_key(prefix), name, value)
            else:
                pipe.hincrby(stats_key(prefix), name, value)
        pipe.execute()
    except redis.RedisError as exc:
        log.debug("metrics write skipped: %s", exc)


def accepted(svc: HasRedis, count: int) -> None:
    incr(svc.redis, svc.settings.redis_key_prefix, {"pings_accepted": count})  # type: ignore[attr-defined]


def rejected(svc: HasRedis, reason: str) -> None:
    incr(svc.redis, svc.settings.redis_key_prefix, {f"requests_rejected:{reason}": 1})  # type: ignore[attr-defined]


def read(client: redis.Redis, prefix: str) -> dict[str, float]:
    raw = client.hgetall(stats_key(prefix))
    return {k.decode(): float(v) for k, v in raw.items()}
