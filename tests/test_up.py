"""`heatreplay up` as a user runs it: real subprocesses, embedded broker, bounded waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from app.auth import mint_token
from app.settings import Settings
from tests.conftest import free_port, wait_until


def _env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HEATREPLAY_ENV": "test",
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "HEATREPLAY_REDIS_PREFIX": f"up{uuid.uuid4().hex[:8]}",
            "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "WEB_PORT": str(free_port()),
            "WEB_WORKERS": "1",
            "WEB_THREADS": "8",
            "WEB_HTTP_THREADS": "4",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(overrides)
    return env


DRIVERS = 200


def test_up_serves_health_and_live_frames_then_stops_on_ctrl_c(settings, tmp_path):
    env = _env(settings)
    base = f"http://127.0.0.1:{env['WEB_PORT']}"
    # 200 drivers: ~7 % of the fleet is online at night in Lagos (~23:00-05:00 UTC), and
    # with 20 none or one was; the frame stayed empty and the test failed by the hour
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--drivers", str(DRIVERS)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = wait_until(lambda: _get(base + "/healthz"), timeout=60, interval=0.5)
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok"
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "postgres": True,
            "redis": True,
            "kafka": True,
        }
        token = mint_token(settings, "viewer")
        # the simulator feeds it: drivers appear in the live frame
        frame = wait_until(
            lambda: (
                (r := _get(base + "/api/live?precision=4", token)) is not None
                and r.status_code == 200
                and r.json()["total"] > 0
                and r.json()
            ),
            timeout=60,
            interval=0.5,
        )
        assert frame["mode"] == "live" and frame["precision"] == 4
        # at most the whole fleet (how many are online depends on the hour in Lagos)
        assert frame["total"] == sum(v for _, v in frame["cells"]) <= DRIVERS
        assert _get(base + "/api/live").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "heatreplay is up: http://127.0.0.1:" in text and "/?token=" in text
    assert "starting the embedded one" in text
    assert text.rstrip().endswith("· stopped")
    assert "Traceback" not in text
    assert (tmp_path / ".run" / "web.log").exists()
    # nothing it started is left listening
    time.sleep(0.5)
    assert _get(base + "/healthz") is None


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``: pid -> command line."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat[1]) == pid:
            found[int(entry)] = cmdline.decode(errors="replace")
    return found


def test_up_stops_and_says_so_when_the_embedded_broker_dies(settings, tmp_path):
    """The embedded broker was started but not watched: killed, it left the workers
    retrying a broker that was gone (and its pings with it) while up said nothing."""
    env = _env(settings)
    base = f"http://127.0.0.1:{env['WEB_PORT']}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--no-simulate"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: _get(base + "/healthz"), timeout=60, interval=0.5)
        brokers = [p for p, cmd in _children(proc.pid).items() if "--listener-url" in cmd]
        assert len(brokers) == 1, _children(proc.pid)
        os.kill(brokers[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    text = out.decode(errors="replace")
    assert proc.returncode == 1, text
    assert "broker exited with code -9; see " in text and "broker.log. Stopping." in text
    assert text.rstrip().endswith("· stopped") and "Traceback" not in text
    time.sleep(0.5)
    assert _get(base + "/healthz") is None  # the web and the workers were stopped too


def test_up_says_what_is_missing_instead_of_a_stack_trace(settings, tmp_path):
    no_redis = _env(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "up"],
        cwd=tmp_path,
        env=no_redis,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "Redis is not reachable" in r.stderr and "REDIS_URL" in r.stderr
    assert "Traceback" not in r.stderr

    no_pg = _env(settings, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "up"],
        cwd=tmp_path,
        env=no_pg,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "PostgreSQL is not reachable" in r.stderr and "DATABASE_URL" in r.stderr
    assert "Traceback" not in r.stderr


def _get(url: str, token: str | None = None) -> requests.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.get(url, headers=headers, timeout=3)
    except requests.RequestException:
        return None
