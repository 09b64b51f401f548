"""The benchmark suite: ``make bench`` (or ``.venv/bin/python -m bench``).

Runs each item on its own scratch stack (database, Redis prefix, broker, product
processes), prints the figures with the machine, and writes them all to
bench/results/<UTC timestamp>.json. Timing never fails anything: a benchmark reports.

    .venv/bin/python -m bench                       # everything, default sizes (minutes)
    .venv/bin/python -m bench e2e --duration 60     # one item, bigger
    .venv/bin/python -m bench --smoke               # tiny sizes (CI: the scripts run)
    .venv/bin/python -m bench --docs                # also put the figures in docs/performance.md
    make bench ARGS="fanout --sockets 100,1000"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import e2e_ingest, fanout, live_latency, memory, replay
from bench.machine import busy_processes, describe, load_average, machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:latest:begin -->", "<!-- bench:latest:end -->"

ITEMS: dict[str, tuple[ModuleType, str]] = {
    "e2e": (e2e_ingest, "1. end-to-end ingest"),
    "latency": (live_latency, "2. live latency"),
    "replay": (replay, "3. replay"),
    "fanout": (fanout, "4. fan-out"),
    "memory": (memory, "5. memory"),
}

# a few seconds each: proves the scripts run and report, says nothing about speed
SMOKE: dict[str, Callable[[], dict[str, Any]]] = {
    "e2e": lambda: e2e_ingest.run(
        duration_s=2,
        processes=1,
        threads=1,
        batch=1_000,
        drivers=1_000,
        raw_rows=10_000,
        rates=(2_000,),
        geom_index="deferred",  # the raw COPY and then the index build it defers
    ),
    "latency": lambda: live_latency.run(rate=2_000, duration_s=3, probe_every_s=0.6),
    "replay": lambda: replay.run(depths=(1,), drivers=3, frames=5, seeks=3, fps_s=1.0),
    "fanout": lambda: fanout.run(sockets=(5,), measure_s=1.5, rate=2_000, drivers=500),
    "memory": lambda: memory.run(
        soak_s=2,
        rate=2_000,
        sockets=2,
        driver_counts=(50, 200),
        rounds=2,
        window_s=3.0,
        sample_s=1,
    ),
}


def _flat(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            label = v.get("sockets") or v.get("days") or v.get("drivers") or i
            _flat(f"{prefix}[{label}{'/' + v['views'] if 'views' in v else ''}]", v, out)
    elif not (isinstance(value, list) and len(value) > 8):  # timelines stay in the file
        out.append((prefix, value))


def render(name: str, figures: dict[str, Any]) -> str:
    rows: list[tuple[str, Any]] = []
    _flat("", figures, rows)
    return "\n".join(f"  {k}: {v}" for k, v in rows)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Run {report['started']} ({'smoke' if report['smoke'] else 'default sizes'}), "
        f"`{report['command']}`.",
        "",
        f"Machine: {describe(report['machine'])}; load average at the end "
        f"{report['load_average_at_end']}.",
        "",
    ]
    for name, result in report["items"].items():
        lines.append(f"**{ITEMS[name][1]}** ({result.get('seconds', '?')} s)")
        lines.append("")
        lines.append("```")
        lines.append(render(name, result.get("figures") or {"error": result.get("error")}))
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def update_docs(report: dict[str, Any]) -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n## Latest figures\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOCS.write_text(f"{head}{BEGIN}\n{markdown(report)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds each")
    parser.add_argument(
        "--docs", action="store_true", help="write the figures to docs/performance.md"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default bench/results/<ts>.json)"
    )
    sub = parser.add_subparsers(dest="item")
    for name, (module, title) in ITEMS.items():
        module.add_arguments(sub.add_parser(name, help=title))
    args = parser.parse_args(argv)
    names = [args.item] if args.item else list(ITEMS)

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke": args.smoke,
        "machine": machine(),
        "items": {},
    }
    print(f"machine: {describe(report['machine'])}", flush=True)
    print(f"busiest processes now: {busy_processes()}", flush=True)
    failed = False
    for name in names:
        module, title = ITEMS[name]
        print(f"\n== {title} ...", flush=True)
        t0 = time.monotonic()
        entry: dict[str, Any] = {"load_average_before": load_average()}
        try:
            figures = (
                SMOKE[name]()
                if args.smoke
                else module.from_args(
                    args if args.item == name else parser.parse_args([*_flags(argv), name])
                )
            )
            entry["figures"] = figures
            print(render(name, figures), flush=True)
        except Exception as exc:  # report the others; say what broke
            failed = True
            entry["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        entry["seconds"] = round(time.monotonic() - t0, 1)
        entry["load_average_after"] = load_average()
        report["items"][name] = entry
    report["load_average_at_end"] = load_average()
    out = args.out or RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {out}")
    if args.docs:
        update_docs(report)
        print(f"figures written to {DOCS}")
    return 1 if failed else 0


def _flags(argv: list[str] | None) -> list[str]:
    """The suite-level flags of this invocation, to re-parse one item's defaults."""
    given = argv if argv is not None else sys.argv[1:]
    return [a for a in given if a in {"--smoke", "--docs"}]


if __name__ == "__main__":
    sys.exit(main())
