"""What the Kafka hop costs per ping, alone: the product's producer and consumer settings
against its own embedded broker, no web, no database, no Redis.

`python -m bench.kafka_cost [--rate 70000] [--seconds 15] [--compression none,lz4]
[--pings-per-message 1,500]`: one producer process sends batches of 5,000 wire pings
(one message per ping, keyed by driver, as SPEC's topic holds them; or JSON arrays of N
pings, as KAFKA_PINGS_PER_MESSAGE = N writes them) and waits for each batch's
acknowledgement, as a web request does, paced at ``rate`` pings/s; two consumer
processes fetch with the live worker's and the sink's fetch settings and only count.
Prints CPU microseconds per ping of the producer, the broker and each consumer. The sum
is a floor under any pipeline with that message form, whatever the consumers do with
the messages.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer

from app.broker import start_embedded_broker
from app.kafka_io import (
    FETCH_MIN_BYTES_SINK,
    FETCH_WAIT_DEFAULT_MS,
    FETCH_WAIT_LIVE_MS,
    consumer_config,
    ensure_topics,
    producer_config,
)
from app.ping import Ping, encode_wire
from app.settings import Settings, load_settings
from bench.machine import describe, machine
from bench.stack import cpu_seconds, free_port

BATCH = 5_000
JOIN_S = 5.0  # the dev broker completes a group join in about half the session timeout


def _messages(per_message: int = 1, drivers: int = 20_000) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    out = []
    for i in range(BATCH):
        ping = Ping(
            f"drv-{i % drivers:06d}", 6.4 + i * 0.00006, 3.1 + i * 0.00011, now + i, 30.5, 121.4
        )
        out.append((ping.driver_id.encode(), encode_wire(ping)))
    if per_message > 1:
        out = [
            (out[i][0], b"[" + b",".join(v for _, v in out[i : i + per_message]) + b"]")
            for i in range(0, len(out), per_message)
        ]
    return out


def _produce(
    settings: Settings, compression: str, rate: float, seconds: float, per: int, out: Any
) -> None:
    config = {**producer_config(settings), "compression.type": compression}
    producer = Producer(config)
    messages = _messages(per)
    cpu0 = time.process_time()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        for key, value in messages:
            producer.produce(settings.topic_pings, value, key)
        if producer.flush(30):
            raise RuntimeError("the broker did not acknowledge a batch")
        sent += len(messages)
        ahead = sent * per / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    out.put((sent, time.process_time() - cpu0))


def _consume(settings: Settings, group: str, wait_ms: int, min_bytes: int, out: Any) -> None:
    consumer = Consumer(consumer_config(settings, group, wait_ms, min_bytes))
    consumer.subscribe([settings.topic_pings])
    count = 0
    try:
        while True:
            for msg in consumer.consume(20_000, 0.2):
                if msg.error() is None:
                    count += 1
            out.value = count
    finally:
        consumer.close()


def run(compression: str, rate: float, seconds: float, per: int = 1) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        {
            **os.environ,
            "HEATREPLAY_ENV": "test",
            "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "TOPIC_PINGS": f"kcost-{tag}",
            "TOPIC_DLQ": f"kcost-{tag}.dlq",
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
        },
        dotenv=None,
    )
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryFile() as log:
        broker = start_embedded_broker(settings, log)
        consumers: list[Any] = []
        try:
            ensure_topics(settings)
            counts = {"live": ctx.Value("q", 0), "sink": ctx.Value("q", 0)}
            fetch = {
                "live": (FETCH_WAIT_LIVE_MS, 1),
                "sink": (FETCH_WAIT_DEFAULT_MS, FETCH_MIN_BYTES_SINK),
            }
            for name, (wait_ms, min_bytes) in fetch.items():
                proc = ctx.Process(
                    target=_consume,
                    args=(settings, f"kcost-{name}-{tag}", wait_ms, min_bytes, counts[name]),
                    daemon=True,
                )
                proc.start()
                consumers.append(proc)
            time.sleep(JOIN_S)
            pids = {"broker": broker.pid, "live": consumers[0].pid, "sink": consumers[1].pid}
            before = {k: cpu_seconds(pid) for k, pid in pids.items()}
            started = time.monotonic()
            result = ctx.Queue()
            producer = ctx.Process(
                target=_produce, args=(settings, compression, rate, seconds, per, result)
            )
            producer.start()
            sent, producer_cpu = result.get(timeout=seconds + 120)
            producer.join()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and min(c.value for c in counts.values()) < sent:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            after = {k: cpu_seconds(pid) for k, pid in pids.items()}
            pings = sent * per
            figures = {
                "messages": float(sent),
                "pings": float(pings),
                "producer_us_per_ping": producer_cpu / pings * 1e6,
                **{f"{k}_us_per_ping": (after[k] - before[k]) / pings * 1e6 for k in pids},
                "broker_percent_of_a_core": (after["broker"] - before["broker"]) / elapsed * 100,
                "consumed_live": float(counts["live"].value),
                "consumed_sink": float(counts["sink"].value),
            }
            figures["total_us_per_ping"] = sum(
                figures[f"{k}_us_per_ping"] for k in ("producer", "broker", "live", "sink")
            )
            return figures
        finally:
            for proc in consumers:
                proc.terminate()
                proc.join(10)
            broker.terminate()
            broker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=70_000, help="pings/s produced")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--compression", default="none", help="comma-separated, e.g. none,lz4")
    parser.add_argument(
        "--pings-per-message", default="1", help="comma-separated, e.g. 1,500 (SPEC: 1)"
    )
    args = parser.parse_args()
    print(describe(machine()))
    for per in (int(x) for x in args.pings_per_message.split(",")):
        for compression in args.compression.split(","):
            f = run(compression, args.rate, args.seconds, per)
            print(
                f"kafka hop, compression {compression}, {per} ping(s) per message, "
                f"{f['pings']:,.0f} pings at {args.rate:,.0f}/s: CPU us per ping producer "
                f"{f['producer_us_per_ping']:.2f}, broker {f['broker_us_per_ping']:.2f} "
                f"({f['broker_percent_of_a_core']:.0f} % of a core), live consumer "
                f"{f['live_us_per_ping']:.2f}, sink consumer {f['sink_us_per_ping']:.2f}; "
                f"total {f['total_us_per_ping']:.2f}"
                + (
                    ""
                    if min(f["consumed_live"], f["consumed_sink"]) >= f["messages"]
                    else f" (consumers got only {f['consumed_live']:,.0f} / "
                    f"{f['consumed_sink']:,.0f} messages)"
                )
            )


if __name__ == "__main__":
    main()
