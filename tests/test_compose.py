"""The Docker deployment, validated without an engine: Debian's docker-compose (wrong
types, undefined services, bad interpolation) and the compose-spec JSON schema (newer
keys), then the properties the deployment promises, read from the resolved config."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from app.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = {"HEATREPLAY_SECRET": "0123456789abcdef0123456789abcdef", "POSTGRES_PASSWORD": "pw1"}
SERVERS = {"postgis", "redis", "kafka", "web"}
APP_SERVICES = {"web", "live-worker", "sink", "retention", "simulator"}


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing (Debian: apt-get install -y docker-compose)")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [exe, "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """`docker-compose config` with every profile, anchors and variables resolved."""
    out = compose("--profile", "simulate", "config", env=SECRETS)
    assert out.returncode == 0, out.stderr
    return dict(YAML(typ="safe").load(io.StringIO(out.stdout)))


def test_docker_compose_config_and_compose_spec_schema_pass():
    quiet = compose("config", "-q", env=SECRETS)
    assert quiet.returncode == 0, quiet.stderr
    schema = subprocess.run(
        [
            str(Path(sys.executable).with_name("check-jsonschema")),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_secrets_have_no_default(missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    out = compose("config", "-q", env=env)
    assert out.returncode != 0
    assert f"set {missing}" in out.stderr


def test_servers_are_healthchecked_and_waited_for(resolved):
    services = resolved["services"]
    assert set(services) == {"postgis", "redis", "kafka", "init", *APP_SERVICES}
    for name in SERVERS:
        assert services[name]["healthcheck"]["test"], name
    init = services["init"]
    assert init["depends_on"] == {
        s: {"condition": "service_healthy"} for s in ("postgis", "redis", "kafka")
    }
    assert init["entrypoint"] == ["/bin/sh", "-c"]
    assert init["command"] == ["heatreplay migrate && heatreplay topics"]
    assert init["restart"] == "no"
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["init"] == {"condition": "service_completed_successfully"}, name
        for server in ("postgis", "redis", "kafka"):
            assert deps[server] == {"condition": "service_healthy"}, (name, server)
    assert services["simulator"]["depends_on"]["web"] == {"condition": "service_healthy"}
    assert services["simulator"]["profiles"] == ["simulate"]
    assert {s: services[s]["command"][0] for s in APP_SERVICES} == {
        "web": "web",
        "live-worker": "live-worker",
        "sink": "sink",
        "retention": "retention",
        "simulator": "simulate",
    }


def test_named_volumes_and_app_environment(resolved):
    services = resolved["services"]
    assert set(resolved["volumes"]) == {"pgdata", "redisdata", "kafkadata"}
    # docker-compose 1.x prints the short form "name:/path:rw"
    mounts = {
        name: [v.rsplit(":", 1)[0] for v in services[name]["volumes"]]
        for name in ("postgis", "redis", "kafka")
    }
    assert mounts == {
        "postgis": ["pgdata:/var/lib/postgresql/data"],
        "redis": ["redisdata:/data"],
        "kafka": ["kafkadata:/var/lib/kafka/data"],
    }

    for name in ("init", *APP_SERVICES):
        env = services[name]["environment"]
        # every variable the app is given is one it reads
        assert set(env) - {"LOG_LEVEL", "LOG_FORMAT"} <= set(ENV_NAMES), name
        assert env["HEATREPLAY_ENV"] == "production"
        assert env["HEATREPLAY_SECRET"] == SECRETS["HEATREPLAY_SECRET"]
        assert env["DATABASE_URL"] == "postgresql://heatreplay:pw1@postgis:5432/heatreplay"
        assert (env["REDIS_URL"], env["KAFKA_BOOTSTRAP"]) == ("redis://redis:6379/0", "kafka:9092")
        assert (env["WEB_HOST"], env["WEB_PORT"]) == ("0.0.0.0", "8000")
    assert services["web"]["ports"][0]["target"] == 8000
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert services["postgis"]["image"].startswith("postgis/postgis:")
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_dockerfile_is_slim_non_root_and_caches_dependencies():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms[-1] == "FROM python:3.11-slim"
    assert re.search(r"npm ci .*&& sh vendor\.sh", text)
    assert "COPY --from=web-assets /src/web/vendor ./web/vendor" in lines
    # the dependency install sees pyproject.toml only; the source comes after it
    deps_at = next(i for i, ln in enumerate(lines) if "pip install ." in ln)
    first_source = next(i for i, ln in enumerate(lines) if ln.startswith("COPY app"))
    assert lines.index("COPY pyproject.toml ./") < deps_at < first_source
    assert lines[-4:] == [
        "USER 10001:10001",
        "EXPOSE 8000",
        'ENTRYPOINT ["heatreplay"]',
        'CMD ["web"]',
    ]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "web/node_modules", "tests"} <= set(ignored)
