"""One behavioural suite for every backend: the Lock contract, once."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import WAIT, Procs

MakeLock = Callable[..., crosslock.Lock]


@contextlib.contextmanager
def held_by_another_thread(lock: crosslock.Lock) -> Iterator[threading.Event]:
    """Hold ``lock`` in a helper thread for the block; set the yielded event to let go."""
    acquired, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            acquired.set()
            release.wait(WAIT)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert acquired.wait(WAIT)
        yield release
    finally:
        release.set()
        t.join(WAIT)


# -- single thread ---------------------------------------------------------------------


def test_acquire_release_held_locked_token(make_lock: MakeLock) -> None:
    lock = make_lock()
    assert not lock.held
    assert not lock.locked()
    assert lock.token is None
    assert lock.acquire() is True
    assert lock.held
    assert lock.locked()
    token = lock.token
    assert isinstance(token, int)
    assert lock.token == token  # the same for as long as the hold lasts
    lock.release()
    assert not lock.held
    assert not lock.locked()
    assert lock.token is None


def test_tokens_increase_across_holds(make_lock: MakeLock) -> None:
    lock = make_lock()
    tokens: list[int] = []
    for _ in range(3):
        with lock:
            token = lock.token
            assert token is not None
            tokens.append(token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3


def test_reentrant_per_thread(make_lock: MakeLock) -> None:
    lock = make_lock()
    assert lock.acquire()
    assert lock.acquire(timeout=0)
    with lock:
        assert lock.held
    lock.release()
    assert lock.held
    lock.release()
    assert not lock.held
    with pytest.raises(crosslock.NotHeldError):
        lock.release()


def test_release_without_hold(make_lock: MakeLock) -> None:
    lock = make_lock()
    with pytest.raises(crosslock.NotHeldError, match="un-acquired"):
        lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_objects_of_one_name_are_one_lock(make_lock: MakeLock) -> None:
    a = make_lock("same")
    b = make_lock("same")
    with a:
        assert b.held  # same thread, same lock: re-entrant
        assert b.acquire(timeout=0)
        b.release()
    assert not b.held


def test_with_binds_lock_and_decorator(make_lock: MakeLock) -> None:
    lock = make_lock()
    with lock as bound:
        assert bound is lock

    @lock
    def work(x: int) -> int:
        assert lock.held
        return x * 2

    assert work(21) == 42
    assert work.__name__ == "work"
    assert not lock.held


@pytest.mark.parametrize("bad", [-0.5, float("nan"), -2])
def test_bad_timeout_value(make_lock: MakeLock, bad: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        make_lock(timeout=bad)
    lock = make_lock()
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(timeout=bad)
    assert not lock.held


@pytest.mark.parametrize("bad", ["1", True, [1]])
def test_bad_timeout_type(make_lock: MakeLock, bad: Any) -> None:
    with pytest.raises(TypeError, match="timeout"):
        make_lock(timeout=bad)
    lock = make_lock()
    with pytest.raises(TypeError, match="timeout"):
        lock.acquire(timeout=bad)
    assert not lock.held


def test_minus_one_means_no_timeout(make_lock: MakeLock) -> None:
    lock = make_lock()
    assert lock.acquire(timeout=-1)
    lock.release()


@pytest.mark.parametrize("huge", [1e300, float("inf")])
@pytest.mark.parametrize("where", ["main thread", "other thread"])
def test_timeout_too_long_to_wait_means_no_timeout(
    make_lock: MakeLock, procs: Procs, huge: float, where: str
) -> None:
    lock = make_lock(timeout=huge)
    assert lock.timeout is None
    ctx = multiprocessing.get_context("fork")
    acquired, release = ctx.Event(), ctx.Event()
    procs.start(ctx, workers.hold_until, lock, acquired, release)
    assert acquired.wait(WAIT)
    results: list[object] = []

    def wait() -> None:
        try:
            results.append(lock.acquire(timeout=huge))
            lock.release()
        except Exception as exc:  # an OverflowError, say: reported below
            results.append(exc)

    # The holder lets go at once: the wait usually starts first (and would
    # fail on the huge timeout), else it finds the lock free.
    other = threading.Thread(target=release.set if where == "main thread" else wait)
    other.start()
    if where == "main thread":
        wait()
    else:
        release.set()
    other.join(WAIT)
    assert results == [True]
    assert procs.join_all() == [0]


def test_nonblocking_with_timeout_is_an_error(make_lock: MakeLock) -> None:
    lock = make_lock()
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1)


# -- threads -----------------------------------------------------------------------------


def test_threads_exclude_each_other(make_lock: MakeLock) -> None:
    lock = make_lock("shared-name")
    other = make_lock("shared-name")
    done = threading.Event()
    results: list[Any] = []
    with held_by_another_thread(lock) as release:
        results.append(other.acquire(blocking=False))
        results.append(other.acquire(timeout=0.05))
        results.append(lock.held)  # not this thread's hold
        with pytest.raises(crosslock.NotHeldError, match="another thread"):
            lock.release()

        def waiter() -> None:
            results.append(other.acquire(timeout=WAIT))
            other.release()
            done.set()

        w = threading.Thread(target=waiter)
        w.start()
        release.set()  # the waiter is woken by this release
        assert done.wait(WAIT)
        w.join(WAIT)
    assert results == [False, False, False, True]


def test_many_threads_count_exactly(make_lock: MakeLock) -> None:
    lock = make_lock()
    state = {"n": 0, "inside": 0, "overlap": False}
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait(WAIT)
        for _ in range(200):
            with lock:
                state["inside"] += 1
                if state["inside"] != 1:
                    state["overlap"] = True
                state["n"] += 1
                state["inside"] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert state == {"n": 1200, "inside": 0, "overlap": False}


# -- asyncio -------------------------------------------------------------------------------


def test_async_with_tasks_exclude_each_other(make_lock: MakeLock) -> None:
    lock = make_lock()

    async def main() -> list[str]:
        log: list[str] = []
        first_in = asyncio.Event()

        async def one(tag: str, signal_in: bool) -> None:
            async with lock as bound:
                assert bound is lock
                assert lock.held
                log.append(f"{tag} in")
                if signal_in:
                    first_in.set()
                    await asyncio.sleep(0)  # let the other task try while we hold
                    await asyncio.sleep(0)
                log.append(f"{tag} out")

        a = asyncio.create_task(one("a", True))
        await first_in.wait()
        b = asyncio.create_task(one("b", False))
        await asyncio.wait_for(asyncio.gather(a, b), WAIT)
        return log

    assert asyncio.run(main()) == ["a in", "a out", "b in", "b out"]
    assert not lock.locked()


def test_async_reentrant_per_task_and_decorator(make_lock: MakeLock) -> None:
    lock = make_lock()

    @lock
    async def inner() -> int:
        assert lock.held
        return 7

    async def main() -> int:
        async with lock, lock:  # the same task may enter again
            token = lock.token
            assert token is not None
            return await inner()

    assert asyncio.run(main()) == 7
    assert not lock.locked()


def test_async_timeout(make_lock: MakeLock) -> None:
    lock = make_lock(timeout=0.05)
    with held_by_another_thread(lock):

        async def main() -> None:
            with pytest.raises(crosslock.Timeout):
                async with lock:
                    pass  # pragma: no cover - must not get here

        asyncio.run(main())
    assert lock.acquire(timeout=WAIT)  # nothing left half-held
    lock.release()


def test_decorator_timeout(make_lock: MakeLock) -> None:
    lock = make_lock(timeout=0)

    @lock
    def work() -> None:
        pass  # pragma: no cover - never runs

    with held_by_another_thread(lock):
        with pytest.raises(crosslock.Timeout), lock:
            pass  # pragma: no cover
        with pytest.raises(TimeoutError):
            work()


# -- processes --------------------------------------------------------------------------------


def test_other_process_is_excluded_and_woken(make_lock: MakeLock, mp_context: Any, procs: Procs) -> None:
    lock = make_lock("x")
    acquired, release = mp_context.Event(), mp_context.Event()
    result = mp_context.Queue()
    procs.start(mp_context, workers.hold_until, lock, acquired, release, result)
    assert acquired.wait(WAIT)
    assert lock.locked()
    assert not lock.held
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.05) is False
    with pytest.raises(crosslock.Timeout, match="held elsewhere"), make_lock("x", timeout=0):
        pass  # pragma: no cover
    release.set()
    assert lock.acquire(timeout=WAIT)  # woken by the release
    holder_token = result.get(timeout=WAIT)
    assert lock.token is not None
    assert lock.token > holder_token
    lock.release()
    assert procs.join_all() == [0]


def test_pickled_lock_in_child_is_not_held(make_lock: MakeLock, mp_context: Any, procs: Procs) -> None:
    lock = make_lock()
    result = mp_context.Queue()
    procs.start(mp_context, workers.try_acquire, lock, result, WAIT)
    got, held_before, token = result.get(timeout=WAIT)
    assert (got, held_before) == (True, False)
    assert isinstance(token, int)
    assert procs.join_all() == [0]
    with lock:  # tokens keep increasing across processes
        assert lock.token is not None
        assert lock.token > token


def test_child_forked_while_held_holds_nothing(make_lock: MakeLock, procs: Procs) -> None:
    ctx = __import__("multiprocessing").get_context("fork")
    lock = make_lock()
    with lock:
        result = ctx.Queue()
        procs.start(ctx, workers.try_release, lock, result)
        assert result.get(timeout=WAIT) == "NotHeldError"
        procs.join_all()
        assert lock.held  # the child's attempt did not release our hold
        result2 = ctx.Queue()
        procs.start(ctx, workers.try_acquire, lock, result2, 0)
        assert result2.get(timeout=WAIT)[:2] == (False, False)
    assert procs.join_all() == [0, 0]


def test_many_processes_count_exactly(
    make_lock: MakeLock, mp_context: Any, procs: Procs, tmp_path: Any
) -> None:
    lock = make_lock()
    counter = tmp_path / "counter"
    counter.write_text("0")
    marker = str(tmp_path / "inside")
    start = mp_context.Event()
    for _ in range(3):
        procs.start(mp_context, workers.count_under_lock, lock, str(counter), marker, 50, start)
    start.set()
    assert procs.join_all() == [0, 0, 0]
    assert counter.read_text() == "150"


def test_killed_holder_frees_the_lock(make_lock: MakeLock, mp_context: Any, procs: Procs) -> None:
    lock = make_lock()
    acquired = mp_context.Event()
    proc = procs.start(mp_context, workers.hold_forever, lock, acquired)
    assert acquired.wait(WAIT)
    assert lock.acquire(timeout=0) is False
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT)
    if lock.backend == "multiprocessing":
        # A semaphore cannot be freed for the dead: the waiter says so.
        with pytest.raises(crosslock.AbandonedLockError, match=str(proc.pid)):
            lock.acquire()
        with pytest.raises(crosslock.AbandonedLockError):
            lock.acquire(timeout=WAIT)
    else:
        assert lock.acquire(timeout=WAIT)
        lock.release()


def test_timed_out_waiter_never_holds_later(make_lock: MakeLock, mp_context: Any, procs: Procs) -> None:
    lock = make_lock()
    acquired, release = mp_context.Event(), mp_context.Event()
    procs.start(mp_context, workers.hold_until, lock, acquired, release)
    assert acquired.wait(WAIT)
    assert lock.acquire(timeout=0.05) is False
    release.set()
    assert procs.join_all() == [0]
    assert not lock.held
    # The lock is free for others: a fresh process gets it, proving no late hold here.
    result = mp_context.Queue()
    procs.start(mp_context, workers.try_acquire, lock, result, WAIT)
    assert result.get(timeout=WAIT)[0] is True
    assert not lock.held


def test_pickle_round_trip_in_process(make_lock: MakeLock) -> None:
    lock = make_lock()
    if lock.backend == "multiprocessing":
        with pytest.raises(crosslock.LockError, match="initargs"):
            pickle.dumps(lock)
        return
    copy = pickle.loads(pickle.dumps(lock))
    with lock:
        assert copy.held  # the same lock in the same process
