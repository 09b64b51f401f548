"""One settings object, read from the environment (and an optional .env) once.

Every module takes a ``Settings`` instead of reading ``os.environ`` itself, so tests can
build one with their own topic names, Redis prefix and database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dotenv import dotenv_values

DEV_SECRET = "dev-secret-change-me-never-use-in-production"
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "changethis", "secret", DEV_SECRET})


KAFKA_COMPRESSIONS = ("none", "lz4", "zstd", "snappy", "gzip")
GEOM_INDEX_MODES = ("immediate", "deferred")
# a batched message's pings at most: ~215 bytes per ping at most (a 64-character id and
# every field), so ~215 KB, under a broker's 1 MB default and whole in a dead letter
# (app/dead_letter.py keeps 256 KiB of a value)
MAX_PINGS_PER_MESSAGE = 1_000


class SettingsError(ValueError):
    """A setting is missing or out of range; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/heatreplay"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "hr"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_pings: str = "pings"
    topic_dlq: str = "pings.dlq"
    topic_partitions: int = 4
    topic_retention_ms: int = 6 * 3600 * 1000
    # dead letters are the record of input nobody could use: kept longer than pings
    dlq_retention_ms: int = 7 * 24 * 3600 * 1000
    topic_replication: int = 1
    group_live: str = "heatreplay-live"
    group_sink: str = "heatreplay-sink"
    kafka_session_timeout_ms: int = 6000
    kafka_compression: str = "none"
    # pings per Kafka message: 1 is SPEC's form; more batches a request's pings per
    # partition into JSON arrays (app/wire.py)
    kafka_pings_per_message: int = 1
    secret: str = DEV_SECRET
    live_window_s: float = 30.0
    live_fps: float = 2.0
    max_pings_per_request: int = 10_000
    max_body_bytes: int = 4 * 1024 * 1024
    future_tolerance_s: float = 300.0
    produce_timeout_s: float = 10.0
    sink_batch_max: int = 20_000
    sink_batch_wait_s: float = 0.5
    live_batch_max: int = 20_000
    # 0.2 -> 0.1 s: live p50 -100 ms at 20k pings/s, Redis CPU per ping unchanged for
    # batches of 5k against 10k drivers (docs/performance.md, eleventh round)
    live_batch_wait_s: float = 0.1
    partition_days_ahead: int = 2
    # the spatial index of a day partition of `pings`: "immediate" (SPEC: every day
    # partition is created with it) or "deferred" (built in one sorted pass once the day
    # has been closed for GEOM_INDEX_AFTER_S; ingest then skips the index upkeep that
    # grows with the day, docs/performance.md, twelfth round)
    geom_index: str = "immediate"
    geom_index_after_s: float = 900.0
    geom_index_check_s: float = 300.0
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    web_workers: int = 2
    # every open socket holds a thread for its lifetime: threads per web process, of
    # which web_http_threads are never given to sockets (ingest and the API always have
    # threads; sockets past WEB_THREADS - WEB_HTTP_THREADS are refused, close 1013)
    web_threads: int = 600
    web_http_threads: int = 16
    token_ttl_s: int = 12 * 3600
    jwt_leeway_s: int = 30
    # abuse limits (each answered with a 4xx or a socket error message when exceeded)
    max_bbox_area_deg2: float = 400.0
    max_range_s: int = 31 * 86400
    export_max_rows: int = 1_000_000
    # exports streaming at once per web process (each holds a database connection)
    export_max_concurrent: int = 4
    # an export whose client reads nothing for this long is cut off (its transaction
    # would otherwise hold the lock that creating the next day's partition waits for)
    export_stall_s: float = 60.0
    # the longest an API query may run (analytics over a month of history, say): 503
    api_statement_timeout_s: float = 30.0
    max_sockets_per_token: int = 20
    ws_max_messages_per_s: float = 20.0
    max_polygon_vertices: int = 10_000
    # None: a token is required outside development (see metrics_requires_token)
    metrics_token_required: bool | None = None
    # replay
    replay_default_speed: float = 60.0
    replay_default_step_s: float = 10.0
    replay_max_fps: float = 30.0
    # individual assets (markers) at street zoom
    markers_max: int = 500
    markers_min_precision: int = 7
    # history retention: day partitions of `pings` older than this are dropped by
    # `heatreplay retention` (rollups are kept); 0 keeps everything
    retention_days: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def live_window_ms(self) -> int:
        return int(self.live_window_s * 1000)

    @property
    def redis_key_prefix(self) -> str:
        """Every live key carries the prefix as a Redis Cluster hash tag, so one Lua call
        may touch all of them (they land in one slot)."""
        return "{" + self.redis_prefix + "}:"

    @property
    def is_development(self) -> bool:
        return self.env in {"development", "test"}

    @property
    def metrics_requires_token(self) -> bool:
        if self.metrics_token_required is None:
            return not self.is_development
        return self.metrics_token_required

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def validate(self) -> Settings:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.redis_prefix):
            raise SettingsError("HEATREPLAY_REDIS_PREFIX must be 1-64 of A-Z a-z 0-9 _ . : -")
        for name in ("topic_pings", "topic_dlq", "group_live", "group_sink"):
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", getattr(self, name)):
                raise SettingsError(f"{name.upper()} is not a valid Kafka name")
        if not 0.5 <= self.live_window_s <= 3600:
            raise SettingsError("LIVE_WINDOW_S must be between 0.5 and 3600 seconds")
        if not 0.1 <= self.live_fps <= 30:
            raise SettingsError("LIVE_FPS must be between 0.1 and 30")
        if self.kafka_compression not in KAFKA_COMPRESSIONS:
            raise SettingsError(f"KAFKA_COMPRESSION must be one of {', '.join(KAFKA_COMPRESSIONS)}")
        if not 1 <= self.kafka_pings_per_message <= MAX_PINGS_PER_MESSAGE:
            raise SettingsError(
                f"KAFKA_PINGS_PER_MESSAGE must be between 1 (SPEC's one message per ping) "
                f"and {MAX_PINGS_PER_MESSAGE}"
            )
        if self.geom_index not in GEOM_INDEX_MODES:
            raise SettingsError(f"GEOM_INDEX must be one of {', '.join(GEOM_INDEX_MODES)}")
        if self.geom_index_after_s < 0 or self.geom_index_check_s <= 0:
            raise SettingsError("GEOM_INDEX_AFTER_S must be >= 0 and GEOM_INDEX_CHECK_S > 0")
        if self.group_live == self.group_sink:
            # one group would split the partitions between the two consumers: history
            # and the live map would each miss about half the drivers
            raise SettingsError("GROUP_LIVE and GROUP_SINK must differ")
        if self.topic_pings == self.topic_dlq:
            raise SettingsError("TOPIC_PINGS and TOPIC_DLQ must differ")
        for env_name, low, high in (
            # a consumer that may wait 0 s for a batch never polls the broker
            ("SINK_BATCH_WAIT_S", 0.001, 60.0),
            ("LIVE_BATCH_WAIT_S", 0.001, 60.0),
            ("PRODUCE_TIMEOUT_S", 0.1, 300.0),  # librdkafka refuses less than a few ms
            ("GEOM_INDEX_CHECK_S", 0.01, 86400.0),
            ("REPLAY_DEFAULT_SPEED", 1.0, 3600.0),
            ("REPLAY_DEFAULT_STEP_S", 1.0, 86400.0),
            ("REPLAY_MAX_FPS", 1.0, 120.0),
        ):
            value = getattr(self, ENV_NAMES[env_name])
            if not low <= value <= high:  # also refuses nan
                raise SettingsError(f"{env_name} must be between {low:g} and {high:g}")
        if self.retention_days < 0:
            raise SettingsError("RETENTION_DAYS must be >= 0 (0 keeps everything)")
        if self.topic_partitions < 1 or self.topic_replication < 1:
            raise SettingsError("TOPIC_PARTITIONS and TOPIC_REPLICATION must be >= 1")
        for env_name in ("TOPIC_RETENTION_MS", "DLQ_RETENTION_MS"):
            value = getattr(self, ENV_NAMES[env_name])
            if value != -1 and value <= 0:
                raise SettingsError(f"{env_name} must be positive, or -1 to keep everything")
        for env_name in (
            "TOKEN_TTL_S", "MAX_PINGS_PER_REQUEST", "MAX_BODY_BYTES", "MAX_BBOX_AREA_DEG2",
            "MAX_RANGE_S", "EXPORT_MAX_ROWS", "MAX_SOCKETS_PER_TOKEN", "WS_MAX_MESSAGES_PER_S",
            "MAX_POLYGON_VERTICES", "SINK_BATCH_MAX", "LIVE_BATCH_MAX",
            "EXPORT_MAX_CONCURRENT", "EXPORT_STALL_S", "API_STATEMENT_TIMEOUT_S",
        ):  # fmt: skip
            if getattr(self, ENV_NAMES[env_name]) <= 0:
                raise SettingsError(f"{env_name} must be positive")
        if not 1 <= self.web_http_threads < self.web_threads:
            raise SettingsError(
                "WEB_HTTP_THREADS must be at least 1 and below WEB_THREADS (the threads "
                "left over are the most sockets one web process serves)"
            )
        if self.jwt_leeway_s < 0:
            raise SettingsError("JWT_LEEWAY_S must be >= 0")
        if not self.is_development and self.secret.strip().lower() in PLACEHOLDER_SECRETS:
            raise SettingsError(
                "HEATREPLAY_SECRET is missing or a placeholder; outside development the "
                "service refuses to start without a real secret (e.g. `openssl rand -hex 32`)"
            )
        if len(self.secret) < 16 and not self.is_development:
            raise SettingsError("HEATREPLAY_SECRET must be at least 16 characters")
        return self


# environment variable -> field; the README documents every one of them
ENV_NAMES: dict[str, str] = {
    "HEATREPLAY_ENV": "env",
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "HEATREPLAY_REDIS_PREFIX": "redis_prefix",
    "KAFKA_BOOTSTRAP": "kafka_bootstrap",
    "TOPIC_PINGS": "topic_pings",
    "TOPIC_DLQ": "topic_dlq",
    "TOPIC_PARTITIONS": "topic_partitions",
    "TOPIC_RETENTION_MS": "topic_retention_ms",
    "DLQ_RETENTION_MS": "dlq_retention_ms",
    "TOPIC_REPLICATION": "topic_replication",
    "GROUP_LIVE": "group_live",
    "GROUP_SINK": "group_sink",
    "KAFKA_SESSION_TIMEOUT_MS": "kafka_session_timeout_ms",
    "KAFKA_COMPRESSION": "kafka_compression",
    "KAFKA_PINGS_PER_MESSAGE": "kafka_pings_per_message",
    "HEATREPLAY_SECRET": "secret",
    "LIVE_WINDOW_S": "live_window_s",
    "LIVE_FPS": "live_fps",
    "MAX_PINGS_PER_REQUEST": "max_pings_per_request",
    "MAX_BODY_BYTES": "max_body_bytes",
    "PRODUCE_TIMEOUT_S": "produce_timeout_s",
    "SINK_BATCH_MAX": "sink_batch_max",
    "SINK_BATCH_WAIT_S": "sink_batch_wait_s",
    "LIVE_BATCH_MAX": "live_batch_max",
    "LIVE_BATCH_WAIT_S": "live_batch_wait_s",
    "PARTITION_DAYS_AHEAD": "partition_days_ahead",
    "GEOM_INDEX": "geom_index",
    "GEOM_INDEX_AFTER_S": "geom_index_after_s",
    "GEOM_INDEX_CHECK_S": "geom_index_check_s",
    "WEB_HOST": "web_host",
    "WEB_PORT": "web_port",
    "WEB_WORKERS": "web_workers",
    "WEB_THREADS": "web_threads",
    "WEB_HTTP_THREADS": "web_http_threads",
    "TOKEN_TTL_S": "token_ttl_s",
    "JWT_LEEWAY_S": "jwt_leeway_s",
    "MAX_BBOX_AREA_DEG2": "max_bbox_area_deg2",
    "MAX_RANGE_S": "max_range_s",
    "EXPORT_MAX_ROWS": "export_max_rows",
    "EXPORT_MAX_CONCURRENT": "export_max_concurrent",
    "EXPORT_STALL_S": "export_stall_s",
    "API_STATEMENT_TIMEOUT_S": "api_statement_timeout_s",
    "MAX_SOCKETS_PER_TOKEN": "max_sockets_per_token",
    "WS_MAX_MESSAGES_PER_S": "ws_max_messages_per_s",
    "MAX_POLYGON_VERTICES": "max_polygon_vertices",
    "METRICS_TOKEN_REQUIRED": "metrics_token_required",
    "REPLAY_DEFAULT_SPEED": "replay_default_speed",
    "REPLAY_DEFAULT_STEP_S": "replay_default_step_s",
    "REPLAY_MAX_FPS": "replay_max_fps",
    "MARKERS_MAX": "markers_max",
    "MARKERS_MIN_PRECISION": "markers_min_precision",
    "RETENTION_DAYS": "retention_days",
}


def _convert(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from exc
    return raw


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: str | None = ".env"
) -> Settings:
    """Build Settings from ``environ`` (default ``os.environ``) over an optional .env file."""
    source: dict[str, str] = {}
    if dotenv and os.path.exists(dotenv):
        source.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    source.update(os.environ if environ is None else environ)
    kinds = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    for env_name, attr in ENV_NAMES.items():
        if env_name in source:
            kind = {"int": int, "float": float, "bool": bool, "bool | None": bool}.get(
                str(kinds[attr]), str
            )
            values[attr] = _convert(env_name, source[env_name], kind)
    return Settings(**values).validate()
