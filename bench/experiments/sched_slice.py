#!/usr/bin/env python3
"""Gives the threads of running ssegate nodes a scheduler slice of their own.

    python3 bench/experiments/sched_slice.py SLICE_NS THREAD_NAME[,NAME...] [--while FILE]

Every 100 ms it looks for processes named `ssegate` and sets the slice
(`sched_setattr`, `sched_runtime` on `SCHED_OTHER`: EEVDF kernels, 6.12 and
later, no privilege needed) of each of their threads with one of the names
(`all` for every thread), once per thread. With `--while FILE` it acts only
while FILE exists, so a script can switch it on for some runs and not others.
docs/benchmarks.md, "Publishing connections handed back to the workers, and
a shorter scheduler slice for the request thread", used it with 100000
and `ssegate-request`.
"""
import ctypes
import glob
import os
import struct
import sys
import time

SYS_SCHED_SETATTR = 314  # x86_64
libc = ctypes.CDLL(None, use_errno=True)


def set_slice(tid, ns):
    # struct sched_attr, first version (48 bytes): size, policy (0: OTHER),
    # flags, nice, priority, runtime (the slice), deadline, period.
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, ns, 0, 0))
    if libc.syscall(SYS_SCHED_SETATTR, tid, attr, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def main():
    ns, names = int(sys.argv[1]), sys.argv[2].split(",")
    gate = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--while" else None
    done = set()
    while True:
        if gate is None or os.path.exists(gate):
            for comm in glob.glob("/proc/[0-9]*/comm"):
                try:
                    if open(comm).read().strip() != "ssegate":
                        continue
                except OSError:
                    continue
                pid = comm.split("/")[2]
                for task in glob.glob(f"/proc/{pid}/task/*/comm"):
                    tid = int(task.split("/")[4])
                    try:
                        name = open(task).read().strip()
                        if tid not in done and ("all" in names or name in names):
                            set_slice(tid, ns)
                            done.add(tid)
                            print(f"pid {pid} thread {tid} ({name}): slice {ns} ns", flush=True)
                    except OSError:
                        pass
        time.sleep(0.1)


if __name__ == "__main__":
    main()
