"""Module-level worker functions for multi-process tests (importable by spawn children)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import crosslock


def hold_until(lock: crosslock.Lock, acquired: Any, release: Any, result: Any = None) -> None:
    """Acquire, signal ``acquired``, wait for ``release``, release."""
    assert lock.acquire(timeout=30)
    token = lock.token
    acquired.set()
    release.wait(30)
    if result is not None:
        result.put(token)
    lock.release()


def hold_forever(lock: crosslock.Lock, acquired: Any) -> None:
    """Acquire, signal, then block until killed."""
    assert lock.acquire(timeout=30)
    acquired.set()
    while True:
        time.sleep(3600)


def try_acquire(lock: crosslock.Lock, result: Any, timeout: float | None = 0) -> None:
    """Report whether the lock could be acquired, what ``held`` said before, and release."""
    held_before = lock.held
    try:
        got = lock.acquire(timeout=timeout) if timeout is not None else lock.acquire()
    except crosslock.LockError as exc:
        result.put(("error", type(exc).__name__, str(exc)))
        return
    token = lock.token if got else None
    if got:
        lock.release()
    result.put((got, held_before, token))


def try_release(lock: crosslock.Lock, result: Any) -> None:
    """Report what happens when this process releases a lock it was handed."""
    try:
        lock.release()
    except crosslock.NotHeldError:
        result.put("NotHeldError")
        return
    result.put("released")


def count_under_lock(lock: crosslock.Lock, counter_path: str, marker: str, holds: int, start: Any) -> None:
    """Increment a file counter ``holds`` times under the lock; fail on overlap."""
    start.wait(30)
    for _ in range(holds):
        with lock:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # overlap -> FileExistsError
            os.close(fd)
            with open(counter_path, "r+") as f:
                value = int(f.read() or "0")
                f.seek(0)
                f.write(str(value + 1))
                f.truncate()
            os.unlink(marker)


def append_line(path: str, line: str) -> None:
    """Append one line with a single write (synchronous, unlike a Queue's feeder thread)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def experiment(lock: crosslock.Lock | None, worker: int, out_path: str, barrier: Any) -> None:
    """The classic experiment: a start line, a short pause, an end line."""
    barrier.wait(30)
    if lock is not None:
        lock.acquire()
    try:
        append_line(out_path, f"worker {worker} start")
        time.sleep(0.05)  # the "work": widens the window that a missing lock would show
        append_line(out_path, f"worker {worker} end")
    finally:
        if lock is not None:
            lock.release()


def print_lines(tag: str, lines: int, width: int, barrier: Any) -> None:
    """Print ``lines`` long lines with crosslock.print, each in one call."""
    barrier.wait(30)
    for i in range(lines):
        crosslock.print(f"{tag}{i:05d}" + tag * width)
    sys.stdout.flush()


def print_long_lines_to(target: str, how: str, tag: str, lines: int, width: int, barrier: Any) -> None:
    """Print ``lines`` lines of ``tag * width`` to ``target``, one crosslock.print call each.

    ``how="file"``: open ``target`` in append mode and pass it as ``file=``.
    ``how="stdout"``: point fd 1 and ``sys.stdout`` at ``target`` and print with
    ``file=None``. The target is opened before the barrier, the printing starts
    after it.
    """
    saved = sys.stdout
    if how == "file":
        stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    else:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.close(fd)
        stream = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - closed below
        sys.stdout = stream
    try:
        barrier.wait(30)
        line = tag * width
        for _ in range(lines):
            if how == "file":
                crosslock.print(line, file=stream)
            else:
                crosslock.print(line)
        stream.flush()
    finally:
        sys.stdout = saved
        stream.close()


def hold_open(path: str, mode: str, acquired: Any, release: Any) -> None:
    """Hold ``crosslock.open(path, mode)``, signal ``acquired``, wait for ``release``."""
    with crosslock.open(path, mode, timeout=30):
        acquired.set()
        release.wait(30)


def hold_with_marker(path: str, marker: str, acquired: Any, release: Any) -> None:
    """Hold the lock at ``path`` with an occupancy marker present."""
    lock = crosslock.Lock(path)
    assert lock.acquire(timeout=30)
    with open(marker, "x"):
        pass
    acquired.set()
    release.wait(30)
    os.unlink(marker)
    lock.release()


def acquire_checking_marker(path: str, marker: str, opened: Any, result: Any) -> None:
    """Open the lock file, say so, block until acquired; report whether anyone overlapped."""
    lock = crosslock.Lock(path)  # opens the file now
    opened.set()
    got = lock.acquire()
    overlap = os.path.exists(marker)
    lock.release()
    result.put((got, overlap))


def pool_init(lock: crosslock.Lock) -> None:
    global _pool_lock
    _pool_lock = lock


_pool_lock: crosslock.Lock | None = None


def pool_task(x: int) -> int:
    assert _pool_lock is not None
    with _pool_lock:
        return x * 2


def use_lock(lock: crosslock.Lock) -> int:
    with lock:
        return 1


def stress_worker(
    lock: crosslock.Lock, counter: str, marker: str, threads: int, holds: int, start: Any, result: Any
) -> None:
    """``threads`` threads of this process each take ``lock`` ``holds`` times with an
    occupancy marker (exclusive create on entry) and a shared counter."""
    import threading

    overlaps = [0]
    start.wait(60)

    def run() -> None:
        for _ in range(holds):
            with lock:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    overlaps[0] += 1
                    continue
                os.close(fd)
                with open(counter, "r+") as f:
                    value = int(f.read() or "0")
                    f.seek(0)
                    f.write(str(value + 1))
                    f.truncate()
                os.unlink(marker)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    result.put(overlaps[0])
