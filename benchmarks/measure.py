"""The measurements themselves.

:func:`uncontended`, :func:`handoff` and :func:`throughput` run inside a
measuring process (see :mod:`benchmarks.sandbox`) and fork their workers;
:func:`import_cost` and :func:`memory` start fresh interpreters.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import sandbox
from .stats import median, percentile
from .subjects import Handle, Subject

__all__ = ["handoff", "handoff_stats", "import_cost", "memory", "round_trips", "throughput", "uncontended"]

#: How long a holder waits, once the waiter said it is about to block, before releasing.
SETTLE_S = 0.002

_clock = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes


def _lock_for(subject: Subject, inherited: Handle | None, path: str) -> Handle:
    return inherited if inherited is not None else subject.make(path)


# -- 1. uncontended acquire + release -------------------------------------------


def _pairs(acquire: Callable[[], object], release: Callable[[], object], n: int) -> int:
    start = _clock()
    for _ in range(n):
        acquire()
        release()
    return _clock() - start


def uncontended(subject: Subject, path: str, target_s: float) -> float:
    """Nanoseconds per acquire+release pair, from one batch of about ``target_s`` seconds.

    The batch size is found by doubling from a few pairs (which warms up too).
    """
    lock = subject.make(path)
    acquire, release = lock.acquire, lock.release
    n = 8
    while True:
        elapsed = _pairs(acquire, release, n)
        if elapsed >= 2_000_000 or n >= 1 << 24:
            break
        n *= 4
    n = max(8, int(n * target_s * 1e9 / max(elapsed, 1)))
    return _pairs(acquire, release, n) / n


# -- 2. hand-off latency ----------------------------------------------------------


def _cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round((usage.ru_utime + usage.ru_stime) * 1e9)


def _handoff_worker(
    subject: Subject,
    inherited: Handle | None,
    path: str,
    peer: Connection,
    first: bool,
    n: int,
    stop_at: int,
) -> dict[str, Any]:
    """One of two players; the holder and the waiter swap roles at each hand-off.

    The waiter ends the game (says "stop" instead of "waiting") after ``n``
    hand-offs or once the clock passes ``stop_at``.
    """
    lock = _lock_for(subject, inherited, path)
    # Warm up one after the other (after fork, files are opened lazily), then
    # the first player takes the lock.
    if first:
        lock.acquire()
        lock.release()
        peer.send("warm")
        peer.recv()
        lock.acquire()
        peer.send("held")
    else:
        peer.recv()
        lock.acquire()
        lock.release()
        peer.send("warm")
        peer.recv()
    holder = first
    released: dict[int, int] = {}
    acquired: dict[int, int] = {}
    cpu = waits = 0
    for k in range(n):
        if holder:
            if peer.recv() == "stop":
                break
            # The waiter is about to call acquire() ...
            time.sleep(SETTLE_S)  # ... and is blocked in it by now
            t0 = _clock()
            lock.release()
            released[k] = t0
            peer.recv()  # the waiter holds it now: our turn to wait
        else:
            if k and _clock() >= stop_at:
                peer.send("stop")
                break
            peer.send("waiting")
            c0 = _cpu_ns()
            lock.acquire()
            t1 = _clock()
            cpu += _cpu_ns() - c0
            waits += 1
            acquired[k] = t1
            peer.send("held")
        holder = not holder
    if holder:
        lock.release()
    return {"released": released, "acquired": acquired, "cpu_ns": cpu, "waits": waits}


def handoff(subject: Subject, path: str, n: int, budget_s: float) -> dict[str, Any]:
    """Latencies from the holder's release to the blocked waiter's return, ``n``
    times, or fewer if they take more than ``budget_s`` seconds in all; and the
    waiters' CPU time. :func:`handoff_stats` sums rounds of these up."""
    inherited = subject.make(path) if subject.inherit else None
    a, b = sandbox.CTX.Pipe()
    stop_at = _clock() + round(budget_s * 1e9)
    players = sandbox.run_workers(
        [
            partial(_handoff_worker, subject, inherited, path, a, True, n, stop_at),
            partial(_handoff_worker, subject, inherited, path, b, False, n, stop_at),
        ]
    )
    released = {**players[0]["released"], **players[1]["released"]}
    acquired = {**players[0]["acquired"], **players[1]["acquired"]}
    return {
        "latencies": [t1 - released[k] for k, t1 in acquired.items()],
        "cpu_ns": players[0]["cpu_ns"] + players[1]["cpu_ns"],
        "waits": players[0]["waits"] + players[1]["waits"],
    }


def handoff_stats(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median, p99 and max over the hand-offs of every round, and the waiters'
    CPU time per hand-off."""
    latencies = sorted(x for r in rounds for x in r["latencies"])
    waits = sum(r["waits"] for r in rounds)
    return {
        "median_ns": median(latencies),
        "p99_ns": percentile(latencies, 99),
        "max_ns": float(latencies[-1]),
        "cpu_ns_per_handoff": sum(r["cpu_ns"] for r in rounds) / max(waits, 1),
        "handoffs": float(len(latencies)),
    }


# -- 3 and 4. contended throughput and fairness ------------------------------------


def _section_worker(
    subject: Subject,
    inherited: Handle | None,
    path: str,
    counter: str,
    barrier: Any,
    duration_ns: int,
) -> dict[str, Any]:
    lock = _lock_for(subject, inherited, path)
    fd = os.open(counter, os.O_RDWR | os.O_CLOEXEC)
    acquire, release = lock.acquire, lock.release
    pread, pwrite = os.pread, os.pwrite
    acquire()  # warm-up, outside the count
    release()
    waits = array("q")
    record = waits.append
    sections = 0
    barrier.wait(30)
    start = t0 = _clock()
    end = start + duration_ns
    while t0 < end:
        acquire()
        t1 = _clock()
        value = int.from_bytes(pread(fd, 8, 0), "little")
        pwrite(fd, (value + 1).to_bytes(8, "little"), 0)
        release()
        record(t1 - t0)
        sections += 1
        t0 = _clock()
    os.close(fd)
    return {"sections": sections, "start": start, "end": t0, "waits": waits.tobytes()}


def throughput(
    subject: Subject, path: str, counter: str, processes: int, duration_s: float
) -> dict[str, Any]:
    """``processes`` workers increment a counter file under the lock for ``duration_s``.

    Returns sections per second, the wait distribution over every acquisition,
    the sections per process, and the counter's final value for the
    lost-update check.
    """
    with open(counter, "wb") as f:
        f.write(bytes(8))
    inherited = subject.make(path) if subject.inherit else None
    barrier = sandbox.CTX.Barrier(processes)
    body = partial(_section_worker, subject, inherited, path, counter, barrier, round(duration_s * 1e9))
    workers = sandbox.run_workers([body] * processes)
    with open(counter, "rb") as f:
        final = int.from_bytes(f.read(8), "little")
    waits = array("q")
    for worker in workers:
        waits.frombytes(worker["waits"])
    ordered = sorted(waits)
    per_process = [int(w["sections"]) for w in workers]
    total = sum(per_process)
    elapsed = max(w["end"] for w in workers) - min(w["start"] for w in workers)
    return {
        "sections_per_s": total / max(elapsed, 1) * 1e9,
        "wait_p99_ns": percentile(ordered, 99) if ordered else 0.0,
        "wait_max_ns": float(ordered[-1]) if ordered else 0.0,
        "per_process_min": float(min(per_process)),
        "per_process_max": float(max(per_process)),
        "per_process": per_process,
        "sections": total,
        "counter": final,
    }


# -- 5. import cost ------------------------------------------------------------------


def import_cost(modules: list[str], runs: int, time_limit: float, cwd: str) -> dict[str, list[float]]:
    """Wall milliseconds of ``python -c "import X"`` for each module, and of
    ``python -c "pass"`` (key ``""``), in ``runs`` rounds that run each once.

    Every module's bytecode is cached (in a fresh ``PYTHONPYCACHEPREFIX`` under
    ``cwd``, by an uncounted first round), whatever ``PYTHONDONTWRITEBYTECODE``
    says: an editable install would otherwise be compiled at each import while
    installed packages are not. A module whose run fails or passes
    ``time_limit`` gets no times.
    """
    env = {**os.environ, "PYTHONPYCACHEPREFIX": os.path.join(cwd, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    codes = {"": "pass", **{m: f"import {m}" for m in modules}}
    times: dict[str, list[float]] = {name: [] for name in codes}
    broken: set[str] = set()
    for rep in range(runs + 1):  # the first round warms caches and bytecode, uncounted
        for name, code in codes.items():
            if name in broken:
                continue
            start = _clock()
            try:
                subprocess.run(
                    [sys.executable, "-c", code],
                    cwd=cwd,
                    env=env,
                    check=True,
                    timeout=time_limit,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except (subprocess.SubprocessError, OSError):
                broken.add(name)
                times[name] = []
                continue
            if rep:
                times[name].append((_clock() - start) / 1e6)
    return times


# -- 6. memory and descriptors ---------------------------------------------------------


def memory(kind: str, count: int, lock_dir: str, time_limit: float) -> dict[str, float]:
    """Run ``memprobe.py`` in a fresh interpreter: ``count`` distinct locks of
    ``kind`` taken and released; descriptors and RSS before and after."""
    probe = Path(__file__).with_name("memprobe.py")
    env = {**os.environ, "CROSSLOCK_DIR": lock_dir}
    done = subprocess.run(
        [sys.executable, str(probe), kind, str(count)],
        env=env,
        cwd=lock_dir,
        check=True,
        timeout=time_limit,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


# -- 7. server round trips ---------------------------------------------------------------


def _timed(call: Callable[[], object], n: int) -> dict[str, float]:
    for _ in range(min(n, 100)):  # warm-up, uncounted
        call()
    times = array("q")
    record = times.append
    for _ in range(n):
        t0 = _clock()
        call()
        record(_clock() - t0)
    ordered = sorted(times)
    return {
        "median_ns": median(ordered),
        "p99_ns": percentile(ordered, 99),
        "max_ns": float(ordered[-1]),
        "count": float(n),
    }


def round_trips(redis_url: str, postgres_url: str | None, n: int) -> dict[str, dict[str, float]]:
    """``n`` sequential round trips on one connection, each timed: redis-py's
    ``ping()`` (key ``redis``) and, given its URL and psycopg, PostgreSQL's
    ``SELECT 1`` (key ``postgres``)."""
    client = importlib.import_module("redis").Redis.from_url(redis_url)
    found = {"redis": _timed(client.ping, n)}
    client.close()
    if postgres_url:
        try:
            psycopg = importlib.import_module("psycopg")
        except ImportError:
            return found
        try:
            with psycopg.connect(postgres_url, autocommit=True, connect_timeout=10) as conn:
                found["postgres"] = _timed(partial(conn.execute, "SELECT 1"), n)
        except psycopg.Error:
            pass  # a figure for the record only: the Redis baseline stands without it
    return found
