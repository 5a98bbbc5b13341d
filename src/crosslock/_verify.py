"""``crosslock verify``: check that crosslock excludes on a given file system.

Starts N processes that each take the lock M times. Inside each hold a
process creates an occupancy marker exclusively (it must not exist), bumps a
counter kept in a file, and removes the marker. Any marker found present is
an overlap; a final counter short of N*M is a lost update. Either means the
file system does not give crosslock's locks their meaning (some network
file systems, some container volumes), and the run says so.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ._lock import Lock

__all__ = ["Verdict", "verify"]


@dataclass
class Verdict:
    folder: str
    filesystem: str
    processes: int
    holds: int
    overlaps: int
    counter: int
    seconds: float
    failures: list[str]

    @property
    def expected(self) -> int:
        return self.processes * self.holds

    @property
    def ok(self) -> bool:
        return not self.overlaps and self.counter == self.expected and not self.failures

    def report(self) -> str:
        rate = self.expected / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"crosslock verify: {self.folder} ({self.filesystem})",
            f"  {self.processes} processes x {self.holds} holds of one lock, "
            f"{self.seconds:.2f} s ({rate:,.0f} holds/s)",
            f"  overlapping holds seen: {self.overlaps}",
            f"  counter: {self.counter} (expected {self.expected})",
        ]
        lines += [f"  worker failed: {f}" for f in self.failures]
        if self.ok:
            lines.append("  verdict: OK - no overlap and no lost update; crosslock excludes here")
        else:
            lines.append(
                "  verdict: NOT SAFE - holds overlapped or updates were lost; "
                "do not rely on file locks in this folder"
            )
        return "\n".join(lines)


def filesystem_of(path: str) -> str:
    """The file system type of ``path`` from /proc/mounts (Linux), or "unknown"."""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _worker(lock: Lock, counter: str, marker: str, holds: int, start: Any, result: Any) -> None:
    overlaps = 0
    start.wait(60)
    for _ in range(holds):
        with lock:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                overlaps += 1  # someone else is inside: no exclusion
                fd = -1
            else:
                os.close(fd)
            with open(counter, "r+b") as f:
                value = int(f.read() or b"0")
                f.seek(0)
                f.write(str(value + 1).encode())
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            if fd != -1:
                try:
                    os.unlink(marker)
                except FileNotFoundError:
                    overlaps += 1
    result.put(overlaps)


def verify(folder: str, processes: int = 4, holds: int = 200, backend: str = "file") -> Verdict:
    """Run the exclusion check in a private subfolder of ``folder``."""
    if processes < 1 or holds < 1:
        raise ValueError(f"processes and holds must be >= 1, got {processes} and {holds}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot verify {folder!r}: it is not an existing directory")
    work = tempfile.mkdtemp(prefix=".crosslock-verify-", dir=folder)
    try:
        counter = os.path.join(work, "counter")
        with open(counter, "wb") as f:
            f.write(b"0")
        marker = os.path.join(work, "inside")
        lock = Lock(os.path.join(work, "verify.lock"), backend=backend)
        ctx = multiprocessing.get_context("spawn")
        start, result = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(lock, counter, marker, holds, start, result), daemon=True)
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        began = time.perf_counter()
        start.set()
        overlaps, failures = 0, []
        for p in procs:
            p.join(max(60.0, holds * 0.5))
            if p.is_alive():
                p.kill()
                p.join(5)
                failures.append(f"pid {p.pid} did not finish in time")
            elif p.exitcode != 0:
                failures.append(f"pid {p.pid} exited with status {p.exitcode}")
        seconds = time.perf_counter() - began
        while not result.empty():
            overlaps += result.get(timeout=5)
        with open(counter, "rb") as f:
            value = int(f.read() or b"0")
        return Verdict(folder, filesystem_of(folder), processes, holds, overlaps, value, seconds, failures)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # our own scratch folder, no holder left
