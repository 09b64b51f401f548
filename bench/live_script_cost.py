"""Instructions Redis runs per ping for the live script: a repeatable figure.

`python -m bench.live_script_cost [--drivers 20000] [--batches 4]` starts its own
redis-server under valgrind's callgrind, applies `bench.live_apply`'s moving fleet (a
warm-up batch, then ``batches`` batches of one ping per driver), and prints the
instructions Redis executed for those batches per ping, with a digest of the resulting
live state (equal digests: the same counts and values).

Wall-clock figures of the script vary by ±15 % from run to run on these two shared cores;
an instruction count repeats to ~1 % for the same code, so a change to the script can be
measured here on its own (docs/performance.md, seventh round). Redis runs ~50x slower
under callgrind: keep the sizes small. Needs valgrind and redis-server on the PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from app.live_counts import LiveCounts
from app.settings import load_settings
from bench.live_apply import moving_fleet
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
            fleet = moving_fleet(drivers, batches, T0)
            warm_at, warm = next(fleet)
            live.apply(warm, warm_at)  # warm: every driver placed
            zero = ["callgrind_control", "-z", str(server.pid)]  # count from here on
            subprocess.run(zero, check=True, capture_output=True)
            for now, pings in fleet:
                live.apply(pings, now)
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
