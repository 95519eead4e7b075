#!/usr/bin/env python3
"""Groups a run's slow deliveries into episodes: when did the tail happen?

Usage: bench/tail_episodes.py [--gap-ms 50] [--stalls FILE] RESULT_DIR...

Each RESULT_DIR holds one run of one system and scenario: the tail log
written by ssegate-bench with SSEGATE_BENCH_TAIL_LOG=RESULT_DIR/tail (files
tail.<pid>) and the run's JSON (<system>--<scenario>.json). The deliveries
at or over the run's p99 are grouped by publish time (a gap of more than
--gap-ms starts a new episode); an episode that delays every stream of the
channels it touches delayed the publishes before fan-out, not one stream.
With --stalls, the gaps seen by bench/stall_probe.py in the same run are
listed beside each episode.
"""
import argparse
import glob
import json
import os
import sys


def load_run(d):
    runs = [j for j in glob.glob(os.path.join(d, "*--*.json")) if not j.endswith("meta.json")]
    if len(runs) != 1:
        sys.exit(f"{d}: expected one <system>--<scenario>.json, found {len(runs)}")
    with open(runs[0]) as f:
        run = json.load(f)
    rows = []
    for path in glob.glob(os.path.join(d, "tail.*")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    rows.append(tuple(int(x) for x in parts))
    if not rows:
        sys.exit(f"{d}: no tail.* lines (was SSEGATE_BENCH_TAIL_LOG={d}/tail set?)")
    rows.sort()
    return run, rows


def episodes(rows, p99_us, gap_us):
    out = []
    for published, _received, latency, channel in rows:
        if latency < p99_us:
            continue
        if out and published - out[-1]["end"] <= gap_us:
            e = out[-1]
        else:
            e = {"start": published, "end": published, "n": 0, "max": 0, "channels": set()}
            out.append(e)
        e["end"] = published
        e["n"] += 1
        e["max"] = max(e["max"], latency)
        e["channels"].add(channel)
    return out


def load_stalls(path):
    stalls = []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            parts = line.split()
            stalls.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return stalls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gap-ms", type=float, default=50.0)
    ap.add_argument("--stalls", help="a bench/stall_probe.py log of the same run")
    ap.add_argument("--top", type=int, default=8, help="episodes listed per run")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    stalls = load_stalls(a.stalls) if a.stalls else None
    for d in a.dirs:
        run, rows = load_run(d)
        p99_us = run["latency_ms"]["p99"] * 1000
        eps = episodes(rows, p99_us, a.gap_ms * 1000)
        tail = sum(e["n"] for e in eps)
        t0 = rows[0][0]
        top = sorted(eps, key=lambda e: -e["n"])[: a.top]
        share = 100 * sum(e["n"] for e in top) / tail if tail else 0
        print(f"{d}: {run.get('label', '?')} {run.get('name', '?')}, p99 {p99_us / 1000:.2f} ms, "
              f"{tail} deliveries at or over it in {len(eps)} episodes; "
              f"the {len(top)} largest hold {share:.0f}%")
        for e in sorted(top, key=lambda e: e["start"]):
            line = (f"  at {(e['start'] - t0) / 1e6:7.3f} s  {(e['end'] - e['start']) / 1000:6.1f} ms  "
                    f"{e['n']:5d} deliveries  {len(e['channels']):4d} channels  max {e['max'] / 1000:6.1f} ms")
            if stalls is not None:
                near = [s for s in stalls if e["start"] - 30_000 <= s[0] <= e["end"] + 30_000]
                line += "  probe gaps: " + (", ".join(f"{g:.1f} ms (waited {w:.1f})" for _, g, w in near) or "none")
            print(line)


if __name__ == "__main__":
    main()
