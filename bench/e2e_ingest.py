"""1. End-to-end ingest: HTTP batches for a fixed time through the whole pipeline, and in
the same run the raw binary COPY rate into the same PostGIS table.

"Keeping up" is measured by what the consumers actually processed (the live worker's
``live_pings`` and the sink's ``sink_rows`` counters in the Redis stats hash, app/metrics.py)
against what the API accepted (``pings_accepted``), sampled every 0.5 s: on the dev broker
reported high watermarks trail multi-message batches, so consumer lag from watermarks would
be wrong. The headline is pipeline rate / raw COPY rate.

    .venv/bin/python -m bench e2e --duration 60 --processes 2 --threads 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from app.copy_rows import COPY_SQL, encode_copy
from app.geom_index import build, indexed_partitions
from app.ping import Ping
from app.retention import day_partitions
from app.settings import GEOM_INDEX_MODES
from bench.load import LoadGenerator, LoadSpec
from bench.stack import Stack, cpu_seconds

SAMPLE_S = 0.5


def _counts(stack: Stack) -> tuple[float, float, float]:
    s = stack.stats()
    return s.get("pings_accepted", 0.0), s.get("live_pings", 0.0), s.get("sink_rows", 0.0)


def raw_copy_rate(stack: Stack, rows: int, chunk: int = 100_000) -> dict[str, Any]:
    """Binary COPY of ``rows`` pre-encoded pings into the same partitioned ``pings`` table
    (today's partition, same indexes) the sink writes, one transaction per chunk; the
    encoding is done before the clock starts, so this is PostgreSQL's limit here. Every
    row has its own point (multiplicative steps modulo two coprime ranges), as the load
    generator's pings do."""
    now_ms = int(time.time() * 1000)
    streams = []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        streams.append(
            encode_copy(
                [
                    Ping(
                        f"raw-{(start + i) % 20_000:06d}",
                        6.4 + ((start + i) * 7919 % 299_993) / 1_000_000,
                        3.1 + ((start + i) * 104_729 % 599_999) / 1_000_000,
                        now_ms - (start + i) % 60_000,
                        30.5,
                        90.0,
                    )
                    for i in range(n)
                ]
            )
        )
    with stack.connect() as conn:
        today = datetime.now(UTC).date()
        conn.execute(
            "SELECT heatreplay_ensure_day_partition(%s, %s)",
            (today, stack.settings.geom_index == "immediate"),
        )
        started = time.perf_counter()
        for stream in streams:
            with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                copy.write(stream)
        elapsed = time.perf_counter() - started
    out: dict[str, Any] = {
        "raw_copy_rows": rows,
        "raw_copy_s": round(elapsed, 3),
        "raw_copy_rows_per_s": round(rows / elapsed),
    }
    if stack.settings.geom_index == "deferred":
        out.update(deferred_index_build(stack))
    return out


def deferred_index_build(stack: Stack) -> dict[str, Any]:
    """GEOM_INDEX=deferred moves the spatial index's cost to after the day: what building
    it over the run's partitions (today's, and tomorrow's if the run crossed midnight)
    costs, as the builder does it (app/geom_index.py), so the figures count the whole
    price of a row."""
    rows = 0
    elapsed = 0.0
    with stack.connect() as conn:
        for partition in sorted(set(day_partitions(conn)) - indexed_partitions(conn)):
            count = conn.execute(f"SELECT count(*) FROM {partition}").fetchone()
            if count and count[0]:
                rows += int(count[0])
                elapsed += build(conn, partition)
    return {
        "deferred_index_rows": rows,
        "deferred_index_s": round(elapsed, 3),
        "deferred_index_us_per_row": round(1e6 * elapsed / max(rows, 1), 2),
    }


def phase(
    stack: Stack, spec: LoadSpec, duration_s: float, catchup_timeout_s: float = 60.0
) -> dict[str, Any]:
    """One load phase; returns once both consumers processed everything it accepted (or
    ``catchup_timeout_s`` after the load stopped)."""
    # the baselines are read before the first request: read after it, a request that
    # landed first sat in the accepted baseline while the consumers counted it here
    gen = LoadGenerator(spec).launch()
    a0, l0, s0 = _counts(stack)
    cpu0 = {**stack.cpu_snapshot(), "load-generator": sum(map(cpu_seconds, gen.pids))}
    gen.go()
    t0 = time.monotonic()
    samples: list[tuple[float, float, float, float]] = []
    try:
        while time.monotonic() - t0 < duration_s:
            time.sleep(SAMPLE_S)
            a, lv, sk = _counts(stack)
            samples.append((time.monotonic() - t0, a - a0, lv - l0, sk - s0))
            stack.check_alive()
        cpu1 = {**stack.cpu_snapshot(), "load-generator": sum(map(cpu_seconds, gen.pids))}
        cpu_s = time.monotonic() - t0
    finally:
        gen.stop()
    load_s = time.monotonic() - t0
    errors = gen.errors
    a_end, l_end, s_end = (x - y for x, y in zip(_counts(stack), (a0, l0, s0), strict=True))
    # after the load stops: how long until both consumers processed everything accepted
    live_caught = sink_caught = None
    deadline = time.monotonic() + catchup_timeout_s
    stop_t = time.monotonic()
    while time.monotonic() < deadline and (live_caught is None or sink_caught is None):
        a, lv, sk = (x - y for x, y in zip(_counts(stack), (a0, l0, s0), strict=True))
        if live_caught is None and lv >= a:
            live_caught = time.monotonic() - stop_t
        if sink_caught is None and sk >= a:
            sink_caught = time.monotonic() - stop_t
        time.sleep(0.1)
    a_final, l_final, s_final = (x - y for x, y in zip(_counts(stack), (a0, l0, s0), strict=True))

    accepted_rate = a_end / load_s
    live_rate = l_end / load_s
    sink_rate = s_end / load_s
    half = [s for s in samples if s[0] >= load_s / 2]
    live_lag = [a - lv for _, a, lv, _ in samples]
    sink_lag = [a - sk for _, a, _, sk in samples]

    def slope(points: list[tuple[float, float]]) -> float:
        """Least-squares growth of a lag over time (pings/s); ~0 when keeping up."""
        if len(points) < 2:
            return 0.0
        n = len(points)
        mx = sum(p[0] for p in points) / n
        my = sum(p[1] for p in points) / n
        den = sum((p[0] - mx) ** 2 for p in points) or 1.0
        return sum((p[0] - mx) * (p[1] - my) for p in points) / den

    live_slope = slope([(t, a - lv) for t, a, lv, _ in half])
    sink_slope = slope([(t, a - sk) for t, a, _, sk in half])
    # keeping up: everything accepted was processed within 2 s of the load stopping (a
    # bounded lag) -- a consumer that falls behind needs (lag / its rate) seconds more
    keeps_live = live_caught is not None and live_caught <= 2.0
    keeps_sink = sink_caught is not None and sink_caught <= 2.0
    if keeps_live and keeps_sink:
        pipeline = accepted_rate
    elif live_caught is not None and sink_caught is not None:
        # everything accepted, end to end, over the time until the slower consumer had it
        pipeline = a_end / (load_s + max(live_caught, sink_caught))
    else:
        pipeline = min(accepted_rate, live_rate, sink_rate)
    cpu = {k: round((cpu1.get(k, 0) - cpu0.get(k, 0)) / cpu_s * 100) for k in cpu1}
    return {
        "load": {
            "duration_s": round(load_s, 1),
            "generator": f"{spec.processes} processes x {spec.threads} threads, {spec.batch} "
            f"pings per request, {spec.drivers} drivers, "
            + (f"paced at {spec.rate:.0f} pings/s" if spec.rate else "as fast as accepted"),
        },
        "accepted_pings": int(a_end),
        # what the generator got 202s for: the API's own counter must agree
        "generator_accepted_pings": gen.accepted,
        "accepted_pings_per_s": round(accepted_rate),
        "request_errors": errors,
        "live_pings_per_s": round(live_rate),
        "sink_rows_per_s": round(sink_rate),
        "live_lag_max_pings": int(max(live_lag, default=0)),
        "sink_lag_max_pings": int(max(sink_lag, default=0)),
        "live_lag_growth_pings_per_s": round(live_slope),
        "sink_lag_growth_pings_per_s": round(sink_slope),
        "live_caught_up_after_s": None if live_caught is None else round(live_caught, 2),
        "sink_caught_up_after_s": None if sink_caught is None else round(sink_caught, 2),
        "live_keeps_up": keeps_live,
        "sink_keeps_up": keeps_sink,
        "processed_after_catchup": {
            "accepted": int(a_final),
            "live": int(l_final),
            "sink": int(s_final),
        },
        "pipeline_pings_per_s": round(pipeline),
        "cpu_percent_of_one_core": cpu,
        "timeline": [[round(t, 1), int(a), int(lv), int(sk)] for t, a, lv, sk in samples],
    }


def run(
    duration_s: float = 20.0,
    processes: int = 2,
    threads: int = 2,
    batch: int = 5_000,
    drivers: int = 20_000,
    raw_rows: int = 500_000,
    rates: tuple[float, ...] = (50_000, 60_000, 70_000),
    pings_per_message: int | None = None,
    geom_index: str | None = None,
) -> dict[str, Any]:
    """An unpaced phase (what ingest accepts when flooded, and what the consumers do
    meanwhile), then paced phases at ``rates``; then the raw COPY rate. The headline
    pipeline rate is the best phase in which both consumers kept up (else the best
    end-to-end rate: accepted / time until the slower consumer had everything)."""
    # the message form: as asked, else the environment's KAFKA_PINGS_PER_MESSAGE (as for
    # every other bench item), else SPEC's one ping per message
    form: dict[str, Any] = {}
    if pings_per_message is not None:
        form["kafka_pings_per_message"] = pings_per_message
    if geom_index is not None:  # else the environment's GEOM_INDEX, else immediate
        form["geom_index"] = geom_index
    # the sink's builder looks once, at the start: the run's days are built and timed at
    # the end by the bench (deferred_index_build), not by the builder halfway through
    form["geom_index_check_s"] = 86_400.0
    with Stack("e2e", web_workers=2, web_threads=8, **form) as stack:
        stack.wait_pipeline_ready()
        base = LoadSpec(
            port=stack.settings.web_port,
            token=stack.token("ingest"),
            processes=processes,
            threads=threads,
            batch=batch,
            drivers=drivers,
            distinct_s=duration_s,  # a paced phase posts every position once
        )
        phases = [phase(stack, base, duration_s)]
        for n, rate in enumerate(rates, 1):
            phases.append(phase(stack, replace(base, rate=rate, seed=n), duration_s))
        raw = raw_copy_rate(stack, raw_rows)
        per_message = stack.settings.kafka_pings_per_message
        index_mode = stack.settings.geom_index
    kept = [p for p in phases if p["live_keeps_up"] and p["sink_keeps_up"]]
    best = max(kept or phases, key=lambda p: p["pipeline_pings_per_s"])
    pipeline = best["pipeline_pings_per_s"]
    return {
        "kafka_pings_per_message": per_message,
        "geom_index": index_mode,
        "pipeline_pings_per_s": pipeline,
        "pipeline_both_consumers_keep_up": bool(kept),
        "pipeline_from_phase": best["load"]["generator"],
        **raw,
        "pipeline_over_raw_copy": round(pipeline / raw["raw_copy_rows_per_s"], 3),
        "ingest_accepted_pings_per_s_unpaced": phases[0]["accepted_pings_per_s"],
        "phases": phases,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="per process")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--drivers", type=int, default=20_000)
    parser.add_argument("--raw-rows", type=int, default=500_000)
    parser.add_argument(
        "--rates", default="50000,60000,70000", help="paced phases, pings/s (comma-separated)"
    )
    parser.add_argument(
        "--pings-per-message",
        type=int,
        default=None,
        help="KAFKA_PINGS_PER_MESSAGE for the run (default: the environment's, else 1, "
        "SPEC's one message per ping)",
    )
    parser.add_argument(
        "--geom-index",
        choices=GEOM_INDEX_MODES,
        default=None,
        help="GEOM_INDEX for the run (default: the environment's, else immediate); "
        "deferred also times the index build over the day's rows",
    )


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        duration_s=args.duration,
        processes=args.processes,
        threads=args.threads,
        batch=args.batch,
        drivers=args.drivers,
        raw_rows=args.raw_rows,
        rates=tuple(float(x) for x in args.rates.split(",") if x),
        pings_per_message=args.pings_per_message,
        geom_index=args.geom_index,
    )
