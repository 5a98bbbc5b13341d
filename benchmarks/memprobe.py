"""Take and release COUNT distinct locks, one after the other; print JSON with
open descriptors and resident memory before and after (Linux ``/proc``).

    python benchmarks/memprobe.py crosslock 10000   # crosslock.Lock(f"n{i}") in $CROSSLOCK_DIR
    python benchmarks/memprobe.py flock 10000       # open, flock, unlock, close: the baseline

Run by the suite in a fresh interpreter, so nothing else is loaded.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import sys
import time


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def with_crosslock(count: int) -> None:
    import crosslock

    for i in range(count):
        lock = crosslock.Lock(f"n{i}")
        lock.acquire()
        lock.release()
        del lock  # dropped after use


def with_flock(count: int) -> None:
    folder = os.environ["CROSSLOCK_DIR"]
    for i in range(count):
        fd = os.open(os.path.join(folder, f"f{i}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def main(argv: list[str]) -> int:
    kind, count = argv[0], int(argv[1])
    run = {"crosslock": with_crosslock, "flock": with_flock}[kind]
    if kind == "crosslock":
        import crosslock  # noqa: F401 - the import is not what is measured

    gc.collect()
    fds_before, rss_before = open_fds(), rss_kib()
    start = time.perf_counter_ns()
    run(count)
    elapsed = time.perf_counter_ns() - start
    gc.collect()
    fds_after, rss_after = open_fds(), rss_kib()
    print(
        json.dumps(
            {
                "locks": count,
                "fds_before": fds_before,
                "fds_after": fds_after,
                "fd_growth": fds_after - fds_before,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_growth_kib": rss_after - rss_before,
                "ns_per_lock": elapsed / count,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
