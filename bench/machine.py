"""The machine a figure was measured on: cores, CPU, memory, versions, broker, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import confluent_kafka
import psycopg
import redis
from psycopg.conninfo import make_conninfo

from app.broker import broker_binary
from app.settings import load_settings


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_gib() -> float:
    kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return round(kib / 1024 / 1024, 1)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes(limit: int = 5) -> list[str]:
    """The processes that used the most CPU since they started (others' test runs share
    the machine; this says who)."""
    import subprocess

    out = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return [" ".join(line.split()) for line in out[:limit]]


def machine() -> dict[str, Any]:
    settings = load_settings({**os.environ, "HEATREPLAY_ENV": "test"}, dotenv=None)
    # the maintenance database: the server's versions, whether or not the product's
    # own database was ever created on this machine
    admin = make_conninfo(settings.database_url, dbname="postgres")
    with psycopg.connect(admin, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), "
            "(SELECT default_version FROM pg_available_extensions WHERE name = 'postgis')"
        ).fetchone()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    try:
        broker = Path(broker_binary()).name
    except Exception as exc:  # no embedded broker: say so rather than fail the report
        broker = f"unavailable ({exc})"
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": row[0] if row else "?",
        "postgis": row[1] if row else "?",
        "redis": redis_version,
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "psycopg": psycopg.__version__,
        "broker": f"Tansu embedded ({broker}), memory storage",
        "load_average_at_start": load_average(),
        "shared": "every process (load generator, web, workers, broker, PostgreSQL, Redis) "
        "shares these cores, as do other engineers' test runs",
    }


def describe(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']} + PostGIS {m['postgis']}, Redis {m['redis']}, "
        f"confluent-kafka {m['confluent_kafka']} / librdkafka {m['librdkafka']}, "
        f"broker {m['broker']}; load average {m['load_average_at_start']}"
    )
