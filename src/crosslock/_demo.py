"""``crosslock demo``: three processes print start/end lines, without a lock and with one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from typing import TextIO

__all__ = ["run_demo", "run_experiment"]

WORK_SECONDS = 0.3

_WORKER = textwrap.dedent(
    """
    import sys, time
    worker, lock_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def work():
        print(f"worker {worker} start", flush=True)
        time.sleep(seconds)  # the work the lock protects
        print(f"worker {worker} end", flush=True)

    if lock_path == "-":
        work()
    else:
        import crosslock
        with crosslock.Lock(lock_path, backend="file"):
            work()
    """
)


def run_experiment(lock_path: str | None, workers: int = 3, seconds: float = WORK_SECONDS) -> list[str]:
    """Start ``workers`` processes writing to one pipe; return the lines in arrival order."""
    read_end, write_end = os.pipe()
    procs = []
    try:
        for i in range(1, workers + 1):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, str(i), lock_path or "-", str(seconds)],
                    stdout=write_end,
                )
            )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as pipe:
        lines = [line.rstrip("\n") for line in pipe]
    for proc in procs:
        proc.wait()
    return lines


def serialized(lines: list[str]) -> bool:
    """Whether each worker's start line is followed at once by its end line."""
    pairs = zip(lines[::2], lines[1::2], strict=False)
    return len(lines) % 2 == 0 and all(
        a.endswith(" start") and b == a[: -len("start")] + "end" for a, b in pairs
    )


def run_demo(out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="crosslock-demo-") as folder:
        lock_path = os.path.join(folder, "demo.lock")
        without = run_experiment(None)
        with_lock = run_experiment(lock_path)
    left_title, right_title = "without a lock", "with crosslock.Lock"
    width = max(len(left_title), *(len(s) for s in without)) + 6
    lines = [
        "crosslock demo: three processes each print a start line, work "
        f"{WORK_SECONDS:g} s, then print an end line.",
        "",
        f"  {left_title:<{width}}{right_title}",
        f"  {'-' * len(left_title):<{width}}{'-' * len(right_title)}",
    ]
    for left, right in zip(without, with_lock, strict=False):
        lines.append(f"  {left:<{width}}{right}")
    verdict_left = "serialized (by luck)" if serialized(without) else "interleaved"
    verdict_right = "serialized" if serialized(with_lock) else "INTERLEAVED (lock failed!)"
    lines += ["", f"  {'=> ' + verdict_left:<{width}}=> {verdict_right}"]
    print("\n".join(lines), file=stream)
    return 0 if serialized(with_lock) else 1
