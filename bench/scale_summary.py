#!/usr/bin/env python3
"""Medians per system of scripts/bench-scale.sh's JSON lines, as a markdown
table (docs/benchmarks.md "Scale", docs/scaling.md).

    python3 bench/scale_summary.py results.jsonl
"""
import json
import statistics
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit="", digits=2):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


FIGURES = [
    ("streams open", lambda r: r["streams"]["opened"], "", 0),
    ("server processes", lambda r: r["server"]["processes"], "", 0),
    ("deliveries expected", lambda r: r["events"]["expected"], "", 0),
    ("delivered", lambda r: r["events"]["delivered"], "", 0),
    ("lost", lambda r: r["events"]["lost"], "", 0),
    ("duplicated", lambda r: r["events"]["duplicated"], "", 0),
    ("all streams open after", lambda r: r["connect"]["all_open_s"], " s", 1),
    ("broadcast latency p50", lambda r: r["latency_ms"]["p50"], " ms", 0),
    ("broadcast latency p90", lambda r: r["latency_ms"]["p90"], " ms", 0),
    ("broadcast latency p99", lambda r: r["latency_ms"]["p99"], " ms", 0),
    ("server memory per stream (PSS)", lambda r: r["server"]["mem_per_stream_kib"], " KiB", 2),
    ("kernel memory per stream (slab, both ends)", lambda r: r["server"]["kernel_per_stream_kib"], " KiB", 2),
    ("server CPU over the window", lambda r: r["server"]["cpu_window_s"], " s", 1),
    ("server CPU per delivered event", lambda r: r["server"].get("cpu_ns_per_delivery"), " ns", 0),
    ("load generator CPU", lambda r: r["load_generator"]["worker_cpu_s"], " s", 1),
]


def main():
    results = rows(sys.argv[1])
    systems = []
    for r in results:
        if r["label"] not in systems:
            systems.append(r["label"])
    by = {s: [r for r in results if r["label"] == s] for s in systems}
    runs = {s: len(v) for s, v in by.items()}
    print(f"| figure (median of {', '.join(f'{runs[s]} {s}' for s in systems)} runs) | "
          + " | ".join(systems) + " |")
    print("|---|" + "---|" * len(systems))
    for name, get, unit, digits in FIGURES:
        cells = []
        for s in systems:
            try:
                cells.append(fmt(median(get(r) for r in by[s]), unit, digits))
            except (KeyError, TypeError):
                cells.append("–")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
