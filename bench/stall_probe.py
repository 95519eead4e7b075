#!/usr/bin/env python3
"""Notices when this machine does not run a ready task on time.

Usage: bench/stall_probe.py OUT_FILE SECONDS

Sleeps 0.5 ms at a time for SECONDS and writes a line to OUT_FILE for each
wake-up more than 2 ms late: `<unix µs> <gap ms> <ms spent runnable but
not running>` (from /proc/self/schedstat). A gap spent runnable means the
kernel had no free CPU for this process (other tasks, or a vCPU slowed by
its host); a gap spent not runnable means the timer itself fired late.
Run beside a benchmark and pass the file to bench/tail_episodes.py
--stalls to see whether a run's slow deliveries came with such moments.
"""
import sys
import time


def run_delay_ns():
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[1])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out = open(sys.argv[1], "w")
    end = time.monotonic() + float(sys.argv[2])
    last, waited = time.monotonic(), run_delay_ns()
    while last < end:
        time.sleep(0.0005)
        now, w = time.monotonic(), run_delay_ns()
        if now - last > 0.002:
            out.write(f"{int(time.time() * 1e6)} {(now - last) * 1e3:.3f} {(w - waited) / 1e6:.3f}\n")
            out.flush()
        last, waited = now, w
    out.write("# done\n")


if __name__ == "__main__":
    main()
