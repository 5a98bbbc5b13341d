"""The classic experiment: three processes print a start line, pause, print an end line.

Without a lock their lines interleave; with one, each process's two lines are
adjacent. The processes start together at a barrier and append each line with
one synchronous write, so the file shows the true order.
"""

from __future__ import annotations

from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import Procs


def _run(ctx: Any, procs: Procs, lock: crosslock.Lock | None, out: str) -> list[str]:
    barrier = ctx.Barrier(3)
    for worker in (1, 2, 3):
        procs.start(ctx, workers.experiment, lock, worker, out, barrier)
    assert procs.join_all() == [0] * len(procs.procs)
    with open(out) as f:
        return f.read().splitlines()


def _adjacent(lines: list[str]) -> bool:
    return all(
        a.endswith(" start") and b == a.replace(" start", " end")
        for a, b in zip(lines[::2], lines[1::2], strict=False)
    )


def test_with_a_lock_each_process_lines_are_adjacent(
    make_lock: Any, mp_context: Any, procs: Procs, tmp_path: Any
) -> None:
    lines = _run(mp_context, procs, make_lock(), str(tmp_path / "out"))
    assert sorted(lines) == sorted(f"worker {w} {e}" for w in (1, 2, 3) for e in ("start", "end"))
    assert _adjacent(lines), lines


@pytest.mark.parametrize("start", ["fork"])
def test_without_a_lock_lines_can_interleave(start: str, procs: Procs, tmp_path: Any) -> None:
    """The control: shows the experiment can fail (no assertion on luck beyond completeness)."""
    import multiprocessing

    lines = _run(multiprocessing.get_context(start), procs, None, str(tmp_path / "out"))
    assert len(lines) == 6


def test_demo_helper_detects_interleaving() -> None:
    from crosslock._demo import serialized

    assert serialized(["worker 1 start", "worker 1 end", "worker 2 start", "worker 2 end"])
    assert not serialized(["worker 1 start", "worker 2 start", "worker 1 end", "worker 2 end"])
