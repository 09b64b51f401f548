"""The secret rules and the limit settings: outside development the service refuses to
start with a missing or placeholder secret — from create_app and from every command that
starts something or signs something — with a one-line reason, never a stack trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from app import create_app
from app.settings import DEV_SECRET, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
REAL_SECRET = "9f2c4e1a7b3d5f60a8c2e4f6b1d3a5c7"
REFUSAL = "HEATREPLAY_SECRET is missing or a placeholder"


def env(**values: str) -> dict[str, str]:
    return {"HEATREPLAY_ENV": "production", **values}


@pytest.mark.parametrize("secret", ["", "changeme", "CHANGEME ", "change-me", "secret", DEV_SECRET])
def test_placeholder_secret_is_refused_outside_development(secret):
    with pytest.raises(SettingsError, match=REFUSAL):
        load_settings(env(HEATREPLAY_SECRET=secret), dotenv=None)


def test_missing_secret_is_refused_outside_development():
    with pytest.raises(SettingsError, match=REFUSAL):
        load_settings(env(), dotenv=None)


def test_short_secret_is_refused_and_a_real_one_accepted():
    with pytest.raises(SettingsError, match="at least 16 characters"):
        load_settings(env(HEATREPLAY_SECRET="short-but-real"), dotenv=None)
    assert load_settings(env(HEATREPLAY_SECRET=REAL_SECRET), dotenv=None).secret == REAL_SECRET


def test_development_and_test_accept_the_dev_secret():
    for name in ("development", "test"):
        s = load_settings({"HEATREPLAY_ENV": name}, dotenv=None)
        assert s.secret == DEV_SECRET and s.is_development


def test_an_unknown_env_name_counts_as_production():
    with pytest.raises(SettingsError, match=REFUSAL):
        load_settings({"HEATREPLAY_ENV": "prod"}, dotenv=None)


def test_create_app_refuses_a_placeholder_secret_before_touching_anything():
    with pytest.raises(SettingsError, match=REFUSAL):
        create_app(Settings(env="production"))


@pytest.mark.parametrize(
    "argv",
    [["token", "--role", "viewer"], ["web"], ["up", "--no-simulate"]],
    ids=["token", "web", "up"],
)
def test_commands_refuse_a_placeholder_secret_with_one_clear_line(argv):
    environ = {k: v for k, v in os.environ.items() if k != "HEATREPLAY_SECRET"}
    environ.update(HEATREPLAY_ENV="production", HEATREPLAY_SECRET="changeme")
    # WEB_PORT 1: should the refusal ever fail, `web`/`up` cannot bind and stop at once
    environ["WEB_PORT"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"Error: {REFUSAL}; outside development")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_token_command_mints_a_token_with_the_asked_role_and_lifetime():
    environ = {k: v for k, v in os.environ.items() if k != "HEATREPLAY_SECRET"}
    environ.update(HEATREPLAY_ENV="production", HEATREPLAY_SECRET=REAL_SECRET)
    base = [sys.executable, "-m", "app.cli", "token"]
    proc = subprocess.run(
        [*base, "--role", "ingest", "--ttl", "90s"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), REAL_SECRET, algorithms=["HS256"])
    assert claims["role"] == "ingest"
    assert claims["exp"] - claims["iat"] == 90
    assert len(claims["jti"]) == 32
    bad = subprocess.run(
        [*base, "--role", "viewer", "--ttl", "0s"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "the lifetime must be at least 1s" in bad.stderr
    assert bad.stdout == ""
    # without --ttl: TOKEN_TTL_S, as the README says
    proc = subprocess.run(
        [*base, "--role", "viewer"],
        cwd=ROOT,
        env={**environ, "TOKEN_TTL_S": "600"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    claims = jwt.decode(proc.stdout.strip(), REAL_SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["exp"] - claims["iat"]) == ("viewer", 600)


def test_metrics_token_default_depends_on_the_environment():
    dev = load_settings({}, dotenv=None)
    prod = load_settings(env(HEATREPLAY_SECRET=REAL_SECRET), dotenv=None)
    assert (dev.metrics_token_required, dev.metrics_requires_token) == (None, False)
    assert (prod.metrics_token_required, prod.metrics_requires_token) == (None, True)
    off = load_settings(env(HEATREPLAY_SECRET=REAL_SECRET, METRICS_TOKEN_REQUIRED="false"), None)
    on = load_settings({"METRICS_TOKEN_REQUIRED": "true"}, dotenv=None)
    assert (off.metrics_requires_token, on.metrics_requires_token) == (False, True)
    with pytest.raises(SettingsError, match="METRICS_TOKEN_REQUIRED='maybe' is not a boolean"):
        load_settings({"METRICS_TOKEN_REQUIRED": "maybe"}, dotenv=None)


@pytest.mark.parametrize(
    "name",
    [
        "TOKEN_TTL_S",
        "MAX_PINGS_PER_REQUEST",
        "MAX_BODY_BYTES",
        "MAX_BBOX_AREA_DEG2",
        "MAX_RANGE_S",
        "EXPORT_MAX_ROWS",
        "MAX_SOCKETS_PER_TOKEN",
        "WS_MAX_MESSAGES_PER_S",
        "MAX_POLYGON_VERTICES",
        "SINK_BATCH_MAX",
        "LIVE_BATCH_MAX",
    ],
)
def test_limits_must_be_positive(name):
    with pytest.raises(SettingsError, match=f"^{name} must be positive$"):
        load_settings({name: "0"}, dotenv=None)


def test_limit_defaults_and_overrides():
    s = load_settings({}, dotenv=None)
    assert (s.token_ttl_s, s.jwt_leeway_s) == (43_200, 30)
    assert (s.max_pings_per_request, s.max_body_bytes) == (10_000, 4 * 1024 * 1024)
    assert (s.max_bbox_area_deg2, s.max_range_s, s.export_max_rows) == (400.0, 2_678_400, 10**6)
    assert (s.max_sockets_per_token, s.ws_max_messages_per_s) == (20, 20.0)
    assert s.max_polygon_vertices == 10_000
    o = load_settings({"MAX_SOCKETS_PER_TOKEN": "3", "JWT_LEEWAY_S": "0"}, dotenv=None)
    assert (o.max_sockets_per_token, o.jwt_leeway_s) == (3, 0)
    with pytest.raises(SettingsError, match="JWT_LEEWAY_S must be >= 0"):
        load_settings({"JWT_LEEWAY_S": "-1"}, dotenv=None)


@pytest.mark.parametrize("threads,http", [("16", "16"), ("8", "20"), ("600", "0")])
def test_threads_kept_for_http_must_leave_room_for_sockets(threads, http):
    with pytest.raises(SettingsError, match="WEB_HTTP_THREADS must be at least 1 and below"):
        load_settings({"WEB_THREADS": threads, "WEB_HTTP_THREADS": http}, dotenv=None)
    s = load_settings({}, dotenv=None)
    assert (s.web_threads, s.web_http_threads) == (600, 16)


def test_kafka_compression_is_one_librdkafka_knows_and_reaches_the_producer():
    from app.kafka_io import producer_config

    assert producer_config(load_settings({}, dotenv=None))["compression.type"] == "none"
    chosen = load_settings({"KAFKA_COMPRESSION": "lz4"}, dotenv=None)
    assert producer_config(chosen)["compression.type"] == "lz4"
    with pytest.raises(SettingsError, match=r"^KAFKA_COMPRESSION must be one of none, lz4"):
        load_settings({"KAFKA_COMPRESSION": "brotli"}, dotenv=None)


@pytest.mark.parametrize(
    ("env_overrides", "reason"),
    [
        ({"GROUP_LIVE": "g", "GROUP_SINK": "g"}, "GROUP_LIVE and GROUP_SINK must differ"),
        ({"TOPIC_PINGS": "t", "TOPIC_DLQ": "t"}, "TOPIC_PINGS and TOPIC_DLQ must differ"),
        ({"LIVE_BATCH_WAIT_S": "0"}, "LIVE_BATCH_WAIT_S must be between"),
        ({"SINK_BATCH_WAIT_S": "-1"}, "SINK_BATCH_WAIT_S must be between"),
        ({"PRODUCE_TIMEOUT_S": "0.001"}, "PRODUCE_TIMEOUT_S must be between"),
        ({"GEOM_INDEX_CHECK_S": "inf"}, "GEOM_INDEX_CHECK_S must be between"),
        ({"REPLAY_MAX_FPS": "0"}, "REPLAY_MAX_FPS must be between"),
        ({"REPLAY_DEFAULT_STEP_S": "0"}, "REPLAY_DEFAULT_STEP_S must be between"),
        ({"REPLAY_DEFAULT_SPEED": "nan"}, "REPLAY_DEFAULT_SPEED must be between"),
        ({"RETENTION_DAYS": "-1"}, "RETENTION_DAYS must be >= 0"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_start(env_overrides, reason):
    """Each of these was accepted and broke a worker later: a consumer that never polls
    (wait 0), one group splitting the partitions between live and sink, dead letters
    produced back into pings, a division by zero on every replay socket."""
    with pytest.raises(SettingsError, match=reason):
        load_settings(env_overrides, dotenv=None)


@pytest.mark.parametrize(
    "args",
    [
        ["retention", "--every", "1x"],
        ["retention", "--every", "0s"],
        ["up", "--drivers", "0"],
        ["up", "--backfill", "0h"],
        ["simulate", "--interval", "0"],
        ["simulate", "--duration", "soon"],
    ],
)
def test_bad_command_line_values_are_refused_before_any_work(args):
    """Exit 2 with click's usage error, and nothing done first (retention used to run
    one dropping pass before it read --every; up printed its URL, then the simulator
    failed on --drivers 0 and took everything down)."""
    from click.testing import CliRunner

    from app.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert "retention:" not in result.output and "heatreplay is up" not in result.output
