"""Exclusion under load: processes, threads and both, with an occupancy marker and a counter.

The default run is bounded (a few seconds); ``-m stress`` runs the long version.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import Procs

SHAPES = {  # name: (processes, threads per process, holds per thread)
    "processes": (4, 1, 150),
    "threads": (1, 8, 150),
    "mixed": (3, 3, 60),
}
LONG = {"processes": (8, 1, 3000), "threads": (1, 16, 2000), "mixed": (6, 4, 800)}


def _run(lock: crosslock.Lock, tmp_path: Any, procs: Procs, shape: tuple[int, int, int]) -> None:
    processes, threads, holds = shape
    counter, marker = str(tmp_path / "counter"), str(tmp_path / "inside")
    with open(counter, "w") as f:
        f.write("0")
    ctx = multiprocessing.get_context("fork")
    start, result = ctx.Event(), ctx.Queue()
    for _ in range(processes):
        procs.start(ctx, workers.stress_worker, lock, counter, marker, threads, holds, start, result)
    start.set()
    assert procs.join_all(timeout=600) == [0] * processes
    reports = [result.get(timeout=30) for _ in range(processes)]
    errors = [error for _, errs in reports for error in errs]
    assert errors == [], "threads failed (their holds are missing from the counter)"
    assert sum(overlaps for overlaps, _ in reports) == 0
    with open(counter) as f:
        assert int(f.read()) == processes * threads * holds
    assert not os.path.exists(marker)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_overlap_no_lost_update(make_lock: Any, tmp_path: Any, procs: Procs, shape: str) -> None:
    _run(make_lock(), tmp_path, procs, SHAPES[shape])


@pytest.mark.stress
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape", sorted(LONG))
def test_long_no_overlap_no_lost_update(make_lock: Any, tmp_path: Any, procs: Procs, shape: str) -> None:
    _run(make_lock(), tmp_path, procs, LONG[shape])
