"""Soak the exactly-once promise: SIGKILL a real sink process N times while P keyed pings
flow, then compare PostGIS with the accepted pings by key. Optionally fuzz the ingestion
API with many generated bad requests.

Runs on its own broker (free port), its own database (created, migrated, dropped) and
its own Redis prefix, so it never disturbs a running stack or the test suite.

    .venv/bin/python bench/soak_faults.py                      # CI size: 200k pings, 5 kills
    .venv/bin/python bench/soak_faults.py --pings 2000000 --kills 20 --produce-s 60
    .venv/bin/python bench/soak_faults.py --pings 0 --fuzz 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import uuid
from pathlib import Path

import confluent_kafka
import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.broker import start_embedded_broker  # noqa: E402
from app.db import migrate  # noqa: E402
from app.kafka_io import ensure_topics  # noqa: E402
from app.settings import load_settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.faults import OUTPUT, check_history, kill_soak  # noqa: E402


def machine() -> dict[str, object]:
    with psycopg.connect(load_settings(dotenv=None).database_url) as conn:
        row = conn.execute("SELECT version()").fetchone()
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "postgres": str(row[0]).split(" on ")[0] if row else "?",
        "redis": redis.Redis.from_url(load_settings(dotenv=None).redis_url).info()["redis_version"],
    }


def kill_run(pings: int, kills: int, seed: int, produce_s: float) -> dict[str, object]:
    base = load_settings({**os.environ, "HEATREPLAY_ENV": "test"}, dotenv=None)
    tag = uuid.uuid4().hex[:8]
    db_name = f"hr_soak_{tag}"
    admin = make_conninfo(base.database_url, dbname="postgres")
    url = make_conninfo(base.database_url, dbname=db_name)
    s = base.with_(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        database_url=url,
        topic_pings=f"soak-{tag}",
        topic_dlq=f"soak-{tag}.dlq",
        group_live=f"soak-live-{tag}",
        group_sink=f"soak-sink-{tag}",
        redis_prefix=f"soak{tag}",
        kafka_session_timeout_ms=2000,
        sink_batch_wait_s=0.2,
    )
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
    with open(OUTPUT / "soak-broker.log", "ab") as log:
        broker = start_embedded_broker(s, log)
    try:
        migrate(s)
        ensure_topics(s)
        with psycopg.connect(url, autocommit=True) as conn:
            soak, accepted = kill_soak(s, conn, pings, kills, seed, produce_s=produce_s)
            check = check_history(conn, accepted)
        return {**soak.__dict__, **check.as_dict(), "exact": check.exact}
    finally:
        broker.kill()
        broker.wait(10)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name))
            )
        client = redis.Redis.from_url(s.redis_url)
        client.delete(s.redis_key_prefix + "stats")
        client.close()


def fuzz_run(examples: int) -> int:
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_fuzz_ingest.py::test_fuzzed_bad_requests_never_5xx_and_produce_nothing",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env={**os.environ, "FUZZ_EXAMPLES": str(examples)},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--produce-s", type=float, default=12.0, help="spread the pings this long")
    ap.add_argument("--fuzz", type=int, default=0, help="also fuzz with this many requests")
    args = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    ok = True
    if args.pings:
        figures = kill_run(args.pings, args.kills, args.seed, args.produce_s)
        print(json.dumps({"sink_kill_soak": figures}))
        ok = bool(figures["exact"]) and figures["clean_exit_code"] == 0
    if args.fuzz:
        ok = fuzz_run(args.fuzz) == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
