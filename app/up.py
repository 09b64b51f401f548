"""`heatreplay up`: check the servers, migrate, start what is missing, run the workers,
the web server and the simulator, print the URL, and stop everything on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.auth import mint_token
from app.broker import BrokerStartError, start_embedded_broker
from app.db import DatabaseUnavailable, check_postgis, ensure_database, migrate
from app.kafka_io import broker_reachable, ensure_topics
from app.settings import Settings

RUN_DIR = Path(".run")


class SetupError(Exception):
    """Something the product needs is missing; the message says what to do."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Supervisor:
    settings: Settings
    children: list[Child] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        RUN_DIR.mkdir(exist_ok=True)
        log = RUN_DIR / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def reap(self) -> Child | None:
        """The first child that died (a simulator that finished cleanly is just dropped)."""
        for child in list(self.children):
            code = child.proc.poll()
            if code is None:
                continue
            if child.name == "simulator" and code == 0:
                self.children.remove(child)
                continue
            return child
        return None

    def shutdown(self, timeout_s: float = 15.0) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)


def check_redis(settings: Settings) -> None:
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise SetupError(
            f"Redis is not reachable at {settings.redis_url} ({exc}). Start Redis 6+ "
            "(Debian: `apt-get install -y redis-server`) or set REDIS_URL."
        ) from None


def prepare(settings: Settings, progress: bool = True, redis_too: bool = True) -> None:
    """Servers reachable (Redis only if ``redis_too``: migrating needs PostgreSQL alone),
    database created and migrated. Raises SetupError."""
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    if redis_too:
        say("· checking Redis")
        check_redis(settings)
    say("· checking PostgreSQL / PostGIS")
    try:
        ensure_database(settings)
        check_postgis(settings)
    except DatabaseUnavailable as exc:
        raise SetupError(str(exc)) from None
    say("· migrating (alembic upgrade head)")
    migrate(settings)


def run_up(
    settings: Settings,
    simulate: bool = True,
    drivers: int = 300,
    backfill: str | None = None,
    ready_file: Path | None = None,
) -> int:
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prepare(settings)
    sup = Supervisor(settings)
    env = dict(os.environ)

    def on_signal(_sig: int, _frame: object) -> None:
        sup.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # a closed terminal or a lost SSH session: stop everything as on Ctrl-C (SIGHUP's
    # default would end this process alone and leave gunicorn, which takes SIGHUP as
    # "reload", holding the port)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        if broker_reachable(settings, timeout_s=2):
            say(f"· using the Kafka broker at {settings.kafka_bootstrap}")
        else:
            say(f"· no broker at {settings.kafka_bootstrap}: starting the embedded one (Tansu)")
            RUN_DIR.mkdir(exist_ok=True)
            log = RUN_DIR / "broker.log"
            try:
                broker = start_embedded_broker(settings, open(log, "ab"))  # noqa: SIM115
            except BrokerStartError as exc:
                raise SetupError(str(exc)) from None
            # supervised like the others: if it dies, up says so and stops (the workers
            # would otherwise retry a broker that is gone, and it kept its pings in memory);
            # first in, so stopped last
            sup.children.append(Child("broker", broker, log))
        ensure_topics(settings)
        exe = [sys.executable, "-m", "app.cli"]
        sup.spawn("live-worker", [*exe, "live-worker"], env)
        sup.spawn("sink", [*exe, "sink"], env)
        sup.spawn("web", [*exe, "web"], env)
        base = f"http://{settings.web_host}:{settings.web_port}"
        if not _wait_http(base + "/healthz", 30, sup):
            if sup.stop.is_set():  # Ctrl-C while starting: a stop, not a failure
                return 0
            failed = sup.reap()
            if failed is not None:  # a child died while the web server came up
                say(_exited(failed))
                return 1
            raise SetupError(f"the web server did not answer at {base}; see {RUN_DIR}/web.log")
        if simulate:
            argv = [*exe, "simulate", "--url", base, "--drivers", str(drivers)]
            if backfill:
                argv += ["--backfill", backfill, "--then-live"]
            sup.spawn("simulator", argv, env)
        viewer = mint_token(settings, "viewer")
        url = f"{base}/?token={viewer}"
        say("")
        say(f"heatreplay is up: {url}")
        say(f"logs in {RUN_DIR.resolve()}/ ; Ctrl-C stops everything")
        if ready_file:
            ready_file.write_text(url)
        while not sup.stop.wait(0.5):
            failed = sup.reap()
            if failed is not None:
                say(_exited(failed))
                return 1
        return 0
    finally:
        say("· stopping")
        sup.shutdown()
        say("· stopped")


def _exited(child: Child) -> str:
    return f"{child.name} exited with code {child.proc.returncode}; see {child.log}. Stopping."


def _wait_http(url: str, timeout_s: float, sup: Supervisor) -> bool:
    """True once ``url`` answers; False at the deadline, on stop, or once a child died."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not sup.stop.is_set() and sup.reap() is None:
        try:
            if requests.get(url, timeout=2).status_code in (200, 503):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False
