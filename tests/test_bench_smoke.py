"""The benchmark scripts still run: each item of ``python -m bench`` at a tiny size (a few
seconds, all five at once on their own scratch stacks), checked for well-formed figures.
Timing is never asserted here; the figures themselves live in docs/performance.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ("e2e", "latency", "replay", "fanout", "memory")


def _number(figures: dict[str, Any], *path: str) -> float:
    value: Any = figures
    for key in path:
        assert isinstance(value, dict) and key in value, f"missing {'.'.join(path)}"
        value = value[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (path, value)
    assert value >= 0, (path, value)
    return float(value)


def _positive(figures: dict[str, Any], *path: str) -> float:
    value = _number(figures, *path)
    assert value > 0, (path, value)
    return value


def test_every_benchmark_reports_figures(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    procs = {
        item: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench",
                "--smoke",
                "--out",
                str(tmp_path / f"{item}.json"),
                item,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for item in ITEMS
    }
    outputs = {
        item: p.communicate(timeout=240)[0].decode(errors="replace") for item, p in procs.items()
    }
    for item, proc in procs.items():
        assert proc.returncode == 0, f"{item} failed:\n{outputs[item][-3000:]}"
    reports = {item: json.loads((tmp_path / f"{item}.json").read_text()) for item in ITEMS}

    for item, report in reports.items():
        machine = report["machine"]
        assert machine["cores"] >= 1 and machine["python"] and machine["librdkafka"]
        assert machine["postgresql"] and machine["redis"] and machine["broker"]
        assert list(report["items"]) == [item]
        assert "figures" in report["items"][item], report["items"][item].get("error")

    e2e = reports["e2e"]["items"]["e2e"]["figures"]
    for key in ("pipeline_pings_per_s", "raw_copy_rows_per_s", "pipeline_over_raw_copy"):
        _positive(e2e, key)
    # GEOM_INDEX=deferred: the index build it times covers every row the run wrote (1:
    # the stack's warm-up ping)
    assert e2e["geom_index"] == "deferred"
    _positive(e2e, "deferred_index_s")
    assert e2e["deferred_index_rows"] == 1 + e2e["raw_copy_rows"] + sum(
        p["processed_after_catchup"]["sink"] for p in e2e["phases"]
    )
    assert [p["load"]["generator"].rsplit(", ", 1)[1] for p in e2e["phases"]] == [
        "as fast as accepted", "paced at 2000 pings/s"
    ]  # fmt: skip
    for p in e2e["phases"]:
        accepted = _positive(p, "accepted_pings")
        for key in ("accepted_pings_per_s", "live_pings_per_s", "sink_rows_per_s"):
            _positive(p, key)
        _positive(p, "cpu_percent_of_one_core", "machine")
        # both consumers ended up with exactly what the API accepted, which is what the
        # generator got 202s for
        assert p["generator_accepted_pings"] == accepted
        assert p["processed_after_catchup"] == {
            "accepted": accepted, "live": accepted, "sink": accepted
        }  # fmt: skip
        assert p["request_errors"] == 0

    latency = reports["latency"]["items"]["latency"]["figures"]
    assert latency["probes"] >= 3 and latency["probes_seen"] == latency["probes"]
    for key in ("latency_ms_from_accepted_p50", "latency_ms_from_accepted_p99",
                "latency_ms_from_sent_p99"):  # fmt: skip
        _positive(latency, key)
    _positive(latency, "load", "achieved_pings_per_s")

    depth = reports["replay"]["items"]["replay"]["figures"]["depths"][0]
    assert depth["days"] == 1
    _positive(depth, "pings")
    for key in (
        "frame_at_random_t_geohash_6_all_lagos",
        "seek_over_the_socket_send_frame_geohash_6",
    ):
        _positive(depth, key, "p50_ms")
        _positive(depth, key, "p95_ms")
    for key in ("peaks_ms", "timeline_step_60_ms", "stream_fps"):
        _positive(depth, key)

    cases = reports["fanout"]["items"]["fanout"]["figures"]["cases"]
    assert [(c["sockets"], c["views"]) for c in cases] == [(5, "one"), (5, "scattered")]
    for case in cases:
        assert case["socket_errors"] == 0
        for key in (
            "frames",
            "fps_per_socket_mean",
            "frame_delay_ms_p99",
            "web_worker_rss_mib_peak",
        ):
            _positive(case, key)

    mem = reports["memory"]["items"]["memory"]["figures"]
    for name in ("web", "live-worker", "sink", "broker"):
        _positive(mem, "rss_mib_before", name)
        _positive(mem, "rss_mib_after", name)
    by_drivers = mem["redis"]["by_drivers"]
    assert [d["drivers"] for d in by_drivers] == [50, 200]
    for d in by_drivers:
        assert d["drivers_in_window"] == d["drivers"]
        assert all(b > 0 for b in d["redis_live_bytes_per_round"])


def test_the_live_script_cost_bench_counts_instructions() -> None:
    """`python -m bench.live_script_cost` at a tiny size: a positive count, and the same
    live state whichever run produced it (the digest covers counts and driver values)."""
    from bench import live_script_cost

    first = live_script_cost.run(drivers=300, batches=1)
    second = live_script_cost.run(drivers=300, batches=1)
    assert isinstance(first["instructions_per_ping"], int) and first["instructions_per_ping"] > 0
    assert first["state_digest"] == second["state_digest"]


def test_the_kafka_hop_bench_reports_per_ping_costs_for_both_message_forms() -> None:
    """`python -m bench.kafka_cost` at a tiny size, one message per ping and arrays of
    50: every message reaches both consumers and each part's CPU per ping is reported."""
    from bench import kafka_cost

    for per in (1, 50):
        f = kafka_cost.run("none", rate=20_000, seconds=1.0, per=per)
        assert f["pings"] == f["messages"] * per and f["messages"] > 0
        assert f["consumed_live"] == f["consumed_sink"] == f["messages"]
        for part in ("producer", "broker", "live", "sink"):
            assert f[f"{part}_us_per_ping"] >= 0
        assert f["total_us_per_ping"] > 0


def test_the_sink_drain_bench_writes_the_whole_backlog_and_reports_its_rate() -> None:
    """`python -m bench.sink_drain` at a tiny size (arrays of 50 pings per message): the
    sink writes every ping of the backlog and the rate and CPU per row are reported."""
    from bench import sink_drain

    f = sink_drain.run(pings=3_000, per=50, progress=False, batch_max=500)
    assert f["rows_written"] == 3_000
    assert f["rows_per_s"] > 0
    assert f["sink_us_per_row"] >= 0 and f["postgres_us_per_row"] >= 0


def test_the_index_growth_bench_reports_each_mode_and_the_same_answers() -> None:
    """`python -m bench.index_growth` at a tiny size: a window per 10,000 rows, the
    deferred build timed, and the analyst's box query counting the same pings with the
    index and without it."""
    from bench import index_growth

    immediate = index_growth.run("immediate", rows=20_000, every=10_000, progress=False)
    deferred = index_growth.run("deferred", rows=20_000, every=10_000, progress=False)
    for f in (immediate, deferred):
        assert [w["rows_in_partition"] for w in f["windows"]] == [10_000, 20_000]
        for w in f["windows"]:
            # CPU time is read in clock ticks (10 ms): 10,000 rows into a table with no
            # spatial index can take less than one tick on a fast machine
            _number(w, "backend_us_per_row")
    _positive(deferred, "build_s")
    assert "build_s" not in immediate
    day = deferred["indexed_box_day_pings"]
    assert day > 0 and day == deferred["unindexed_box_day_pings"]
    assert day == immediate["indexed_box_day_pings"]  # the same pings, whichever index
    assert deferred["indexed_box_minute_pings"] == deferred["unindexed_box_minute_pings"]
    arrival = index_growth.run("deferred", 20_000, 20_000, progress=False, spatial=False)
    assert (arrival["order"], deferred["order"]) == ("arrival order", "z-order")
    assert arrival["indexed_box_day_pings"] == day  # the same rows, in another order


def test_the_driver_index_bench_reports_upkeep_build_and_the_path_both_ways() -> None:
    """`python -m bench.driver_index` at a tiny size: 40,000 rows are two pings for each
    of the 20,000 drivers, so the path it times has exactly two points with the index
    and without it."""
    from bench import driver_index

    f = driver_index.run(rows=40_000, every=20_000, progress=False)
    for key in ("kept_up", "brin_only"):
        assert [w["rows_in_partition"] for w in f[key]] == [20_000, 40_000]
        for w in f[key]:
            _number(w, "backend_us_per_row")
    assert f["path_points"] == 2
    for key in ("path_ms_without", "path_ms_with", "build_s", "heap_mib", "index_mib"):
        _number(f, key)
