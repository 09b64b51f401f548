"""Instructions Redis runs per ping for the live script: a repeatable figure.

`python -m bench.live_script_cost [--drivers 20000] [--batches 4]` starts its own
redis-server under valgrind's callgrind, applies one warm-up batch and then ``batches``
batches of one ping per driver (each driver ~55 m further, as `bench.live_apply` moves
them), and prints the instructions Redis executed for those batches per ping, with a
digest of the resulting live state (equal digests: the same counts and values).

Wall-clock figures of the script vary by ±15 % from run to run on these two shared cores;
an instruction count repeats to ~1 % for the same code, so a change to the script can be
measured here on its own (docs/performance.md, seventh round). Redis runs ~50x slower
under callgrind: keep the sizes small. Needs valgrind and redis-server on the PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from app.live_counts import LiveCounts
from app.ping import Ping
from app.settings import load_settings
from bench.machine import describe, machine
from bench.stack import free_port

T0 = 1_790_000_000_000


def run(drivers: int, batches: int) -> dict[str, float | str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                # a script running for seconds under valgrind must not start serving
                # other clients meanwhile (that work would be counted too)
                "--busy-reply-threshold",
                "100000000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)
            settings = load_settings(
                {"HEATREPLAY_REDIS_PREFIX": "cost", "LIVE_WINDOW_S": "3600"}, dotenv=None
            )
            live = LiveCounts(client, settings)
            rng = random.Random(7)
            pos = [(6.4 + rng.random() * 0.3, 3.2 + rng.random() * 0.4) for _ in range(drivers)]
            live.apply([Ping(f"d{i}", *pos[i], T0) for i in range(drivers)], T0)
            subprocess.run(
                ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
            )
            for b in range(1, batches + 1):
                pings = []
                for i in range(drivers):
                    lat, lon = pos[i]
                    pos[i] = (lat + 0.0005, lon)
                    pings.append(Ping(f"d{i}", lat + 0.0005, lon, T0 + b * 1000, 30.0, 0.0))
                live.apply(pings, T0 + b * 1000)
            state = [sorted(client.hgetall(k).items()) for k in live.keys.counts]
            state.append(sorted(client.hgetall(live.keys.drv).items()))
            client.shutdown(nosave=True)
        finally:
            client.close()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        total = 0
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    return {
        "instructions_per_ping": round(total / (drivers * batches)),
        "state_digest": hashlib.sha256(repr(state).encode()).hexdigest()[:12],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drivers", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    print(describe(machine()))
    figures = run(args.drivers, args.batches)
    print(
        f"live script: {figures['instructions_per_ping']:,} Redis instructions per ping "
        f"({args.drivers} drivers, {args.batches} batches; state {figures['state_digest']})"
    )


if __name__ == "__main__":
    main()
