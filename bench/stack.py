"""A scratch heatreplay stack for one benchmark, started the way production runs it.

Own PostgreSQL database (created, migrated, dropped), own Redis prefix (keys deleted at
the end), own embedded broker on a free port (stopped at the end, which frees its
topics), and the product's processes as subprocesses: ``python -m app.cli web``,
``live-worker`` and ``sink`` with their settings in environment variables
(app/settings.py ENV_NAMES). Everything it started is stopped in ``close``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.auth import mint_token
from app.broker import start_embedded_broker
from app.db import ensure_database, migrate
from app.kafka_io import ensure_topics
from app.metrics import read as read_stats
from app.settings import ENV_NAMES, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("web", "live-worker", "sink")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never one this process handed out before (the
    kernel may offer a just-closed port again: a broker and a web server then collide)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_database(settings: Settings) -> None:
    """Drop ``settings``' database, sessions and all."""
    name = conninfo_to_dict(settings.database_url)["dbname"]
    admin = make_conninfo(settings.database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def scratch_database(base: Settings, prefix: str, keep: bool = False) -> Iterator[Settings]:
    """A database of its own, created and migrated to head (day partitions ahead, as
    ``base.geom_index`` creates them), dropped afterwards unless ``keep``: ``base``
    pointed at it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    settings = base.with_(database_url=make_conninfo(base.database_url, dbname=name))
    ensure_database(settings)
    try:
        migrate(settings)
        yield settings
    finally:
        if not keep:
            drop_database(settings)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f}s")
        time.sleep(interval)


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes ``load_settings`` in a subprocess return ``settings``."""
    env: dict[str, str] = {}
    for name, attr in ENV_NAMES.items():
        value = getattr(settings, attr)
        if value is None:
            continue
        env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


class Stack:
    """Use as a context manager; ``processes`` picks which product processes run."""

    def __init__(
        self,
        name: str,
        processes: tuple[str, ...] = PROCESSES,
        root: Path = ROOT,
        **overrides: Any,
    ) -> None:
        """``root``: the checkout the product processes run from (an A/B of two commits
        runs one side from a ``git worktree``)."""
        tag = uuid.uuid4().hex[:8]
        base = load_settings({**os.environ, "HEATREPLAY_ENV": "test"}, dotenv=None)
        defaults: dict[str, Any] = {
            "kafka_bootstrap": f"127.0.0.1:{free_port()}",
            "database_url": make_conninfo(base.database_url, dbname=f"hr_bench_{name}_{tag}"),
            "redis_prefix": f"bench{tag}",
            "topic_pings": f"bench-{tag}",
            "topic_dlq": f"bench-{tag}.dlq",
            "group_live": f"bench-live-{tag}",
            "group_sink": f"bench-sink-{tag}",
            # joins take half of this on the dev broker (docs/architecture.md)
            "kafka_session_timeout_ms": 2000,
            "web_port": free_port(),
            "web_workers": 2,
            "web_threads": 16,
            "web_http_threads": 4,
        }
        self.settings = base.with_(**{**defaults, **overrides}).validate()
        self.name = name
        self.processes = processes
        self.root = root
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"hr-bench-{name}-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: subprocess.Popen[bytes] | None = None
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self._db_created = False

    # --- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        s = self.settings
        ensure_database(s)
        self._db_created = True
        migrate(s)
        with open(self.log_dir / "broker.log", "ab") as log:
            self.broker = start_embedded_broker(s, log)
        ensure_topics(s)
        for proc in self.processes:
            self.spawn(proc)
        if "web" in self.procs:
            wait_for(self._web_up, 60, "the web server")

    def spawn(self, proc: str) -> None:
        """Start one product process (``heatreplay <proc>``) from ``root``."""
        env = {**os.environ, **env_of(self.settings), "PYTHONUNBUFFERED": "1"}
        with open(self.log_dir / f"{proc}.log", "ab") as log:
            self.procs[proc] = subprocess.Popen(
                [sys.executable, "-m", "app.cli", proc],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _web_up(self) -> bool:
        self.check_alive()
        try:
            return requests.get(self.http + "/healthz", timeout=5).status_code < 500
        except requests.RequestException:
            return False

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.log_dir}/{name}.log"
                )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self.broker is not None:
            self.broker.terminate()
            try:
                self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait(5)
            self.broker = None
        with contextlib.suppress(redis.RedisError):
            pattern = self.settings.redis_key_prefix.replace("{", "\\{").replace("}", "\\}")
            keys = list(self.redis.scan_iter(match=pattern + "*", count=1000))
            if keys:
                self.redis.delete(*keys)
        self.redis.close()
        if self._db_created:
            drop_database(self.settings)
            self._db_created = False

    # --- handles -----------------------------------------------------------------
    @property
    def db_name(self) -> str:
        return str(conninfo_to_dict(self.settings.database_url)["dbname"])

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.settings.web_port}"

    def token(self, role: str) -> str:
        return mint_token(self.settings, role, ttl_s=6 * 3600)

    def stats(self) -> dict[str, float]:
        return read_stats(self.redis, self.settings.redis_key_prefix)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.database_url, autocommit=True)

    # --- process figures -----------------------------------------------------------
    def pids(self) -> dict[str, list[int]]:
        """Process name -> pids doing its work (gunicorn: the workers, not the master)."""
        out: dict[str, list[int]] = {}
        for name, proc in self.procs.items():
            out[name] = (children(proc.pid) or [proc.pid]) if name == "web" else [proc.pid]
        if self.broker is not None:
            out["broker"] = [self.broker.pid]
        return out

    def postgres_pids(self) -> list[int]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.db_name,),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def rss_mib(self) -> dict[str, float]:
        return {
            name: round(sum(rss_kib(p) for p in pids) / 1024, 1)
            for name, pids in self.pids().items()
        }

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids().items()}
        snap["postgres"] = sum(cpu_seconds(p) for p in self.postgres_pids())
        # the shared server: every client's work counts here, ours is most of it in a run
        snap["redis-server"] = cpu_seconds(int(self.redis.info("server")["process_id"]))
        snap["machine"] = machine_busy_seconds()
        return snap

    def wait_pipeline_ready(self, timeout: float = 60) -> None:
        """Post one ping and wait until both consumer groups have processed it: they are
        assigned and past their first fetch, so a measurement does not include joins."""
        token = self.token("ingest")
        before = self.stats()
        body = b'{"driver_id":"bench-warmup","lat":-45.0,"lon":-120.0}'
        response = requests.post(
            self.http + "/api/pings",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        response.raise_for_status()
        need = [
            n for n, p in (("live_pings", "live-worker"), ("sink_rows", "sink")) if p in self.procs
        ]

        def done() -> bool:
            self.check_alive()
            now = self.stats()
            return all(now.get(n, 0) > before.get(n, 0) for n in need)

        wait_for(done, timeout, "the consumers' first batch", interval=0.2)
