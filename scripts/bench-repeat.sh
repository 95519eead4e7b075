#!/usr/bin/env bash
# Runs scripts/bench.sh several times for the same scenarios and prints the
# median of each figure per system, and the ratio of ssegate's median to
# each peer's: on a shared, noisy machine single runs vary more than the
# differences between systems.
#
#   scripts/bench-repeat.sh 5 "ssegate rawfan" "sessions broadcast-20"
#
# Each run goes scenario by scenario, the systems in turn (reversed in even
# runs). REPORT=docs/benchmarks.md also writes bench.sh's report from the medians
# of the runs (bench/report.py with every run's results).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SYSTEMS=${2:-"ssegate rawfan"}
SCENARIOS=${3:-"sessions"}
shift $(( $# < 3 ? $# : 3 ))
DIRS=()
mkdir -p target/bench-results
for i in $(seq 1 "$RUNS"); do
  dir=target/bench-results/repeat-$(date -u +%Y%m%dT%H%M%SZ)-$i
  echo "== run $i of $RUNS" >&2
  # Even runs take the systems in the reverse order, so that no system
  # always runs first (or last) after each scenario's change of load.
  order=$SYSTEMS
  if (( i % 2 == 0 )); then order=$(tr ' ' '\n' <<< "$SYSTEMS" | tac | tr '\n' ' '); fi
  ./scripts/bench.sh --no-build --systems "$order" --scenarios "$SCENARIOS" --results "$dir" --out "$dir/benchmarks.md" "$@" > "$dir.log" 2>&1
  DIRS+=("$dir")
done
python3 - "$RUNS" "$SYSTEMS" "$SCENARIOS" "${DIRS[@]}" <<'PY'
import json, os, statistics, sys
runs, systems, scenarios, dirs = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), sys.argv[4:]
figures = [("delivered/s", lambda d: d.get("delivered_per_sec")), ("p50 ms", lambda d: d.get("latency_ms", {}).get("p50")),
           ("p90 ms", lambda d: d.get("latency_ms", {}).get("p90")),
           ("p99 ms", lambda d: d.get("latency_ms", {}).get("p99")), ("lost", lambda d: d.get("events", {}).get("lost")),
           ("memory KiB/stream", lambda d: d.get("server", {}).get("mem_per_stream_kib")),
           ("server CPU s (idle: settle; else window)", lambda d: d.get("server", {}).get("cpu_settle_s" if d.get("scenario") == "idle" else "cpu_window_s")),
           ("server CPU ns per delivered event", lambda d: d.get("server", {}).get("cpu_ns_per_delivery")),
           ("publishes/s achieved", lambda d: (d.get("publisher") or {}).get("achieved_rate")),
           ("publish round trip p99 ms (a request, or a batch)", lambda d: ((d.get("publisher") or {}).get("batch_round_trip_ms") or {}).get("p99")),
           ("publisher's largest backlog (publishes due, unsent)", lambda d: (d.get("publisher") or {}).get("max_backlog")),
           ("Redis CPU s while publishing", lambda d: (d.get("redis") or {}).get("cpu_publish_s")),
           ("load generator CPU s (workers + publisher)", lambda d: (lambda g: g["worker_cpu_s"] + g.get("coordinator_cpu_s", 0) if g else None)(d.get("load_generator")))]
def fmt(v):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
print(f"Medians of {runs} runs (`scripts/bench-repeat.sh {runs} \"{' '.join(systems)}\" \"{' '.join(scenarios)}\"`):\n")
for sc in scenarios:
    peers = [s for s in systems if s != "ssegate"]
    print(f"| {sc} | " + " | ".join(systems) + "".join(f" | ssegate ÷ {s}" for s in peers) + " | per-run p99 (ms) |")
    print("|---" * (2 + len(systems) + len(peers)) + "|")
    for name, get in figures:
        meds = {}
        for s in systems:
            vals = []
            for d in dirs:
                p = os.path.join(d, f"{s}--{sc}.json")
                if os.path.exists(p):
                    v = get(json.load(open(p)))
                    if v is not None:
                        vals.append(v)
            meds[s] = statistics.median(vals) if vals else None
        cells = [fmt(meds[s]) if meds[s] is not None else "-" for s in systems]
        ratios = [f"{meds['ssegate'] / meds[s]:.2f}×" if meds.get("ssegate") and meds.get(s) else "-" for s in peers]
        per_run = ""
        if name == "p99 ms":
            per_run = "; ".join(f"{s}: " + ", ".join(fmt(json.load(open(os.path.join(d, f'{s}--{sc}.json')))['latency_ms']['p99']) for d in dirs if os.path.exists(os.path.join(d, f"{s}--{sc}.json"))) for s in systems)
        print(f"| {name} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + f" | {per_run} |")
    print()
PY
if [ -n "${REPORT:-}" ]; then
  python3 bench/report.py "${DIRS[@]}" --out "$REPORT" --svg "${REPORT%.md}.svg" \
    --command "REPORT=$REPORT scripts/bench-repeat.sh $RUNS \"$SYSTEMS\" \"$SCENARIOS\" $*"
  echo "report: $REPORT" >&2
fi
