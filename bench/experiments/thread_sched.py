#!/usr/bin/env python3
"""What the scheduler says about some threads over a window of a run.

    python3 bench/experiments/thread_sched.py PROCESS[:THREAD,...] [PROCESS...]
        [--after SECONDS] [--window SECONDS] [--rate PER_SECOND]

Waits for a process of each name (its `comm`, which Linux cuts to 15
characters: `ssegate-post-re` for `ssegate-post-relay`), then `--after`
seconds (default 15, past a scenario's connect and settle), and reads
`/proc/<pid>/task/<tid>/schedstat` and `status` of the named threads (all
of the process's threads without `:THREAD`) at the start and the end of
`--window` seconds (default 20). For each it prints the CPU time, the
time spent runnable but waiting for a CPU (run delay), the number of
times it ran (time slices) and its voluntary context switches; with
`--rate`, the scenario's publishes a second, also per publish.

docs/benchmarks.md, "An HTTP hop on a quiet machine", used it during
`pub-2k`, `post-2k` and `relay-2k` runs, started with each run (and
`ssegate-post-re` added for `relay-2k`):

    python3 bench/experiments/thread_sched.py redis-server ssegate \\
        ssegate-bench --after 25 --window 30 --rate 2000
"""
import argparse
import glob
import os
import sys
import time


def find(comm):
    """The earliest started process named `comm` (a load generator's main
    process, not the workers it started), or None."""
    found = []
    for path in glob.glob("/proc/[0-9]*/comm"):
        try:
            if open(path).read().strip() == comm:
                pid = int(path.split("/")[2])
                stat = open(f"/proc/{pid}/stat").read()
                found.append((int(stat.rsplit(")", 1)[1].split()[19]), pid))
        except (OSError, ValueError, IndexError):
            pass
    return min(found)[1] if found else None


def sample(pid, names):
    """{tid: (name, cpu_ns, delay_ns, slices, voluntary switches)}"""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            name = open(f"{task}/comm").read().strip()
            if names and name not in names:
                continue
            cpu, delay, slices = (int(x) for x in open(f"{task}/schedstat").read().split())
            vol = 0
            for line in open(f"{task}/status"):
                if line.startswith("voluntary_ctxt_switches:"):
                    vol = int(line.split()[1])
            out[int(task.rsplit("/", 1)[1])] = (name, cpu, delay, slices, vol)
        except (OSError, ValueError):
            pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="PROCESS[:THREAD,...]")
    ap.add_argument("--after", type=float, default=15.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=0.0, help="publishes a second, for per-publish figures")
    ap.add_argument("--wait", type=float, default=120.0, help="longest wait for the processes (s)")
    args = ap.parse_args()

    targets = []
    for t in args.targets:
        comm, _, threads = t.partition(":")
        targets.append((comm, set(threads.split(",")) if threads else set()))
    deadline = time.monotonic() + args.wait
    pids = {}
    while len(pids) < len(targets):
        for comm, _ in targets:
            if comm not in pids and (pid := find(comm)) is not None:
                pids[comm] = pid
        if time.monotonic() > deadline:
            missing = [c for c, _ in targets if c not in pids]
            sys.exit(f"thread_sched: no process named {', '.join(missing)} after {args.wait:.0f} s")
        time.sleep(0.1)
    time.sleep(args.after)
    before = {comm: sample(pids[comm], names) for comm, names in targets}
    time.sleep(args.window)
    after = {comm: sample(pids[comm], names) for comm, names in targets}

    units = args.rate * args.window
    print(f"window {args.window:.0f} s" + (f", {units:.0f} publishes" if units else ""))
    print(
        f"{'process':16} {'thread':16} {'cpu ms':>8} {'delay ms':>9} {'slices':>7} {'vol sw':>7}"
        f" {'delay/slice us':>14}" + (f" {'cpu/pub us':>10} {'delay/pub us':>12}" if units else "")
    )
    for comm, _ in targets:
        rows = {}
        for tid, (name, cpu, delay, slices, vol) in after[comm].items():
            if tid not in before[comm]:
                continue
            _, c0, d0, s0, v0 = before[comm][tid]
            r = rows.setdefault(name, [0, 0, 0, 0])
            for i, v in enumerate((cpu - c0, delay - d0, slices - s0, vol - v0)):
                r[i] += v
        for name, (cpu, delay, slices, vol) in sorted(rows.items()):
            line = (
                f"{comm:16} {name:16} {cpu / 1e6:8.1f} {delay / 1e6:9.1f} {slices:7d} {vol:7d}"
                f" {delay / 1e3 / max(slices, 1):14.1f}"
            )
            if units:
                line += f" {cpu / 1e3 / units:10.1f} {delay / 1e3 / units:12.1f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
