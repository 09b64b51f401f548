"""Counters shared by every web process and worker: one Redis hash per prefix, so
/metrics is the same whichever gunicorn worker or host answers it.

Fields of ``{prefix}:stats``:

- counters: ``pings_accepted``, ``requests_rejected:<reason>``, ``sink_batches``,
  ``sink_rows``, ``sink_dead_letters``, ``sink_commit_seconds`` (a sum), ``live_batches``,
  ``live_pings``, ``live_cell_changes``, ``live_dead_letters``, ``live_apply_seconds``;
- histograms: every field named in ``HISTOGRAMS`` is also one observation per ``incr``
  call (a worker calls ``incr`` once per batch, so ``sink_rows`` there is one batch's
  size): the field keeps the sum and ``<name>:le=<bound>`` counts the observations that
  fell in that bucket (not cumulative; /metrics accumulates). No separate call is needed,
  so the workers' one pipeline per batch also records their histograms.

Open WebSockets are not counted here: /metrics sums the socket leases app/limits.py
keeps per token, which expire by themselves when a process dies (a +1/-1 counter would
drift upward with every crash).

Every write is best effort: metrics must never fail a request or a batch.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Protocol

import redis

log = logging.getLogger(__name__)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)

HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "sink_rows": _BATCH,
    "sink_commit_seconds": _LATENCY,
    "live_pings": _BATCH,
    "live_apply_seconds": _LATENCY,
    "live_frame_seconds": _LATENCY,
}


class HasRedis(Protocol):
    @property
    def redis(self) -> redis.Redis: ...

    @property
    def settings(self) -> object: ...


def stats_key(prefix: str) -> str:
    return prefix + "stats"


def bucket_field(name: str, value: float) -> str:
    """The hash field counting ``value`` in histogram ``name``."""
    bounds = HISTOGRAMS[name]
    i = bisect.bisect_left(bounds, value)
    return f"{name}:le={bounds[i]:g}" if i < len(bounds) else f"{name}:le=+Inf"


def _fields(counts: dict[str, int | float]) -> dict[str, int | float]:
    """The hash increments ``counts`` stands for, histogram buckets included."""
    fields: dict[str, int | float] = {}
    for name, value in counts.items():
        fields[name] = fields.get(name, 0) + value
        if name in HISTOGRAMS:
            bucket = bucket_field(name, value)
            fields[bucket] = fields.get(bucket, 0) + 1
    return fields


def _send(client: redis.Redis, key: str, fields: dict[str, int | float]) -> None:
    """One pipelined write; best effort: a write Redis refuses is logged and dropped."""
    try:
        pipe = client.pipeline(transaction=False)
        for name, value in fields.items():
            if isinstance(value, float):
                pipe.hincrbyfloat(key, name, value)
            else:
                pipe.hincrby(key, name, value)
        pipe.execute()
    except redis.RedisError as exc:
        log.debug("metrics write skipped: %s", exc)


def incr(client: redis.Redis, prefix: str, counts: dict[str, int | float]) -> None:
    """Add ``counts`` to the shared hash in one round trip (see the module docstring for
    the histogram fields this also feeds)."""
    _send(client, stats_key(prefix), _fields(counts))


class CounterBuffer:
    """A worker's per-batch figures, summed in memory and sent by a background thread
    every ``interval_s``: the batch loop never waits for Redis to answer a metrics write
    (the sink spent up to 19 % of its time there while the live worker's scripts kept
    Redis busy). The figures reach the hash at most ``interval_s`` late; ``close`` sends
    what is left. Best effort like ``incr``: a write Redis refuses is dropped."""

    def __init__(self, client: redis.Redis, prefix: str, interval_s: float = 0.2):
        self.client = client
        self.key = stats_key(prefix)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, int | float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-buffer", daemon=True)
        self._thread.start()

    def add(self, counts: dict[str, int | float]) -> None:
        fields = _fields(counts)
        with self._lock:
            for name, value in fields.items():
                self._pending[name] = self._pending.get(name, 0) + value

    def flush(self) -> None:
        with self._lock:
            fields, self._pending = self._pending, {}
        if fields:
            _send(self.client, self.key, fields)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()


def _prefix(svc: HasRedis) -> str:
    return svc.settings.redis_key_prefix  # type: ignore[attr-defined,no-any-return]


def accepted(svc: HasRedis, count: int) -> None:
    incr(svc.redis, _prefix(svc), {"pings_accepted": count})


def rejected(svc: HasRedis, reason: str, pings: int = 0) -> None:
    """One refused ingest request and the pings it carried (0 where the body could not
    be read as pings: malformed, empty)."""
    incr(
        svc.redis,
        _prefix(svc),
        {f"requests_rejected:{reason}": 1, f"pings_rejected:{reason}": pings},
    )


def live_frame_built(svc: HasRedis, seconds: float) -> None:
    """Record how long one live frame took to build (Redis read + build_frame)."""
    incr(svc.redis, _prefix(svc), {"live_frame_seconds": float(seconds)})


def read(client: redis.Redis, prefix: str) -> dict[str, float]:
    raw = client.hgetall(stats_key(prefix))
    return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
