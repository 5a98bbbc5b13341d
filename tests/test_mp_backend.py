"""The multiprocessing backend: inheritance, Pool, abandoned holders."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import WAIT


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_with_initializer(start: str) -> None:
    ctx = multiprocessing.get_context(start)
    lock = crosslock.Lock(backend="multiprocessing")
    with ctx.Pool(2, initializer=workers.pool_init, initargs=(lock,)) as pool:
        assert pool.map(workers.pool_task, range(6), chunksize=1) == [0, 2, 4, 6, 8, 10]
        pool.close()
        pool.join()


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_task_argument_says_how(start: str) -> None:
    ctx = multiprocessing.get_context(start)
    lock = crosslock.Lock(backend="multiprocessing")
    with ctx.Pool(1) as pool:
        with pytest.raises(crosslock.LockError, match=r"initializer=f, initargs=\(lock,\)"):
            pool.apply_async(workers.use_lock, (lock,)).get(WAIT)
        pool.close()
        pool.join()


def test_file_lock_works_as_pool_task_argument() -> None:
    ctx = multiprocessing.get_context("spawn")
    lock = crosslock.Lock("pool-arg")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(workers.use_lock, (lock,)).get(WAIT) == 1
        pool.close()
        pool.join()


def test_unnamed_locks_are_distinct_and_named_ones_shared() -> None:
    a = crosslock.Lock(backend="multiprocessing")
    b = crosslock.Lock(backend="multiprocessing")
    with a:
        assert b.acquire(timeout=0)
        b.release()
    c = crosslock.Lock("mp-named", backend="multiprocessing")
    d = crosslock.Lock("mp-named", backend="multiprocessing")
    with c:
        assert d.held


def test_name_must_be_str() -> None:
    with pytest.raises(TypeError, match="name"):
        crosslock.Lock(3, backend="multiprocessing")


def test_abandoned_without_timeout_is_detected(procs: Any) -> None:
    import os
    import signal

    ctx = multiprocessing.get_context("spawn")
    lock = crosslock.Lock(backend="multiprocessing")
    acquired = ctx.Event()
    proc = procs.start(ctx, workers.hold_forever, lock, acquired)
    assert acquired.wait(WAIT)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT)
    with pytest.raises(crosslock.AbandonedLockError, match="died"):
        lock.acquire()  # timeout=None: must not hang (the suite's timeout would fail it)
    assert not lock.held


def test_lock_handed_down_wins_over_a_local_one_of_the_same_name() -> None:
    from crosslock._backends import _mp

    local = crosslock.Lock("handed", backend="multiprocessing")
    target = _mp.MPTarget.create("other", "multiprocessing", {})
    inherited = _mp._rebuild("handed", target.uid, target.sem, target.state)
    assert inherited.uid == target.uid
    assert crosslock.Lock("handed", backend="multiprocessing").name == "handed"
    assert _mp._named["handed"] is inherited
    assert local.name == "handed"
