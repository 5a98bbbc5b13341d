"""Fault injection: stopped, exiting, exec'ing and forking holders; many threads on one lock."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import crosslock
from crosslock._backends._mp import _alive

from . import workers
from .conftest import WAIT, Procs

MakeLock = Callable[..., crosslock.Lock]
FORK = multiprocessing.get_context("fork")


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds (an observed state, not a guessed delay); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.001)


def _recv(conn: Any, timeout: float = WAIT) -> Any:
    assert conn.poll(timeout), "the child did not answer in time"
    return conn.recv()


@contextlib.contextmanager
def _killing(pid_box: list[int]) -> Iterator[None]:
    """Kill every pid put in ``pid_box`` on the way out (processes this test started)."""
    try:
        yield
    finally:
        for pid in pid_box:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- a stopped holder ---------------------------------------------------------------------------


def test_stopped_holder_keeps_the_lock_until_resumed_and_released(make_lock: MakeLock, procs: Procs) -> None:
    lock = make_lock()
    if lock.backend == "redis":
        pytest.skip("a lease backend frees a stopped holder's lock once its lease runs out, by design")
    acquired, release = FORK.Event(), FORK.Event()
    holder = procs.start(FORK, workers.hold_until, lock, acquired, release)
    assert acquired.wait(WAIT)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the holder should be stopped, not gone"
        # Others time out, however often they try; a stopped holder is not a dead one
        # (the multiprocessing backend checks the holder's liveness every 0.5 s: wait past that).
        for timeout in (0.1, 0.1, 0.7):
            assert lock.acquire(timeout=timeout) is False
            assert not lock.held
        result = FORK.Queue()
        procs.start(FORK, workers.try_acquire, lock, result, 0.1)
        assert result.get(timeout=WAIT)[0] is False  # another process times out too
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    release.set()
    assert lock.acquire(timeout=WAIT)  # the resumed holder released normally
    lock.release()
    holder.join(WAIT)
    assert holder.exitcode == 0


# -- a holder that ends without releasing -----------------------------------------------------


# A forked child ends with os._exit; a spawned one runs the interpreter's shutdown
# (atexit, finalizers): both ways must leave the lock to the others.
@pytest.mark.parametrize(("how", "start"), [("return", "fork"), ("sys.exit", "spawn")])
def test_holder_exiting_without_release(make_lock: MakeLock, procs: Procs, how: str, start: str) -> None:
    lock = make_lock()
    ctx = multiprocessing.get_context(start)
    acquired = ctx.Event()
    proc = procs.start(ctx, workers.hold_and_exit, lock, acquired, how)
    assert acquired.wait(WAIT)
    proc.join(WAIT)
    assert proc.exitcode == (3 if how == "sys.exit" else 0)
    if lock.backend == "multiprocessing":
        # A semaphore outlives its dead holder: waiters must say so rather than hang.
        with pytest.raises(crosslock.AbandonedLockError, match=str(proc.pid)):
            lock.acquire(timeout=WAIT)
        with pytest.raises(crosslock.AbandonedLockError):
            lock.acquire()
        assert not lock.held
    else:
        assert lock.acquire(timeout=WAIT)  # freed with the process (by the kernel, or the server)
        lock.release()


def test_holder_exec_frees_file_lock_while_program_runs(make_lock: MakeLock, procs: Procs) -> None:
    lock = make_lock()
    r, w = os.pipe()
    try:
        proc = procs.start(FORK, workers.hold_then_exec, lock, w)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb", closefd=False) as out:
            assert out.readline() == b"held\n"
            assert out.readline() == b"execd\n"  # the exec'd program runs, same pid
        assert proc.is_alive()
        if lock.backend == "multiprocessing":
            # Not a descriptor: exec does not free a semaphore, and the pid still lives,
            # so others time out; once that program is gone they learn it was abandoned.
            assert lock.acquire(timeout=0.7) is False
            proc.kill()
            proc.join(WAIT)
            with pytest.raises(crosslock.AbandonedLockError):
                lock.acquire(timeout=WAIT)
            return
        # Close-on-exec: the lock was freed at exec although the process lives on.
        assert lock.acquire(timeout=WAIT)
        assert proc.is_alive()
        lock.release()
        result = FORK.Queue()
        procs.start(FORK, workers.try_acquire, lock, result, WAIT)
        assert result.get(timeout=WAIT)[0] is True  # free for other processes too
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.parametrize("end", ["release", "killed"])
def test_subprocess_of_holder_inherits_nothing(make_lock: MakeLock, procs: Procs, end: str) -> None:
    lock = make_lock()
    parent_conn, child_conn = FORK.Pipe()
    pids: list[int] = []
    with _killing(pids):
        holder = procs.start(FORK, workers.hold_and_popen, lock, child_conn, end)
        grandchild = _recv(parent_conn)
        pids.append(grandchild)
        if end == "release":
            assert _recv(parent_conn) == "released held=False"
        else:
            assert _recv(parent_conn) == "holding"
            assert lock.acquire(timeout=0.1) is False  # really held meanwhile
            holder.kill()
            holder.join(WAIT)
        assert _alive(grandchild), "the subprocess should still run"
        if end == "killed" and lock.backend == "multiprocessing":
            with pytest.raises(crosslock.AbandonedLockError, match=str(holder.pid)):
                lock.acquire(timeout=WAIT)
            return
        # Free although the subprocess (started with close_fds=False) lives on.
        assert lock.acquire(timeout=WAIT)
        assert _alive(grandchild)
        lock.release()
        if end == "release":
            parent_conn.send("exit")
            holder.join(WAIT)
            assert holder.exitcode == 0


# -- fork -------------------------------------------------------------------------------------


@pytest.mark.parametrize("wait", [WAIT, None], ids=["timeout", "forever"])
def test_fork_while_a_thread_waits(make_lock: MakeLock, procs: Procs, wait: float | None) -> None:
    lock = make_lock()
    acquired, release = FORK.Event(), FORK.Event()
    third = procs.start(FORK, workers.hold_until, lock, acquired, release)
    assert acquired.wait(WAIT)
    results: list[bool] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        got = lock.acquire() if wait is None else lock.acquire(timeout=wait)
        results.append(got)
        if got:
            lock.release()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        assert started.wait(WAIT)
        # The thread is inside the backend's wait (the core marks itself busy then).
        _wait_for(lambda: bool(lock._core._busy), "the thread to wait on the backend")
        parent_conn, child_conn = FORK.Pipe()
        child = procs.start(FORK, workers.forked_waiter, lock, child_conn)
        assert _recv(parent_conn) == "held=False try=False"
    finally:
        release.set()  # the third process lets go: the thread and the child compete
    parent_conn.send("go")
    assert _recv(parent_conn) == "acquired=True held=True"
    assert _recv(parent_conn) == "released held=False"
    t.join(WAIT)
    assert not t.is_alive(), "the parent's waiting thread hangs"
    assert results == [True]
    child.join(WAIT)
    third.join(WAIT)
    assert (child.exitcode, third.exitcode) == (0, 0)
    assert lock.acquire(timeout=WAIT)
    lock.release()


@pytest.mark.parametrize("fork_from", ["holder", "other-thread"])
def test_forked_child_cannot_release_with_a_thread_waiting(
    make_lock: MakeLock, procs: Procs, fork_from: str
) -> None:
    lock = make_lock()
    results: list[bool] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        got = lock.acquire(timeout=WAIT)
        results.append(got)
        if got:
            lock.release()

    assert lock.acquire(timeout=WAIT)
    try:
        w = threading.Thread(target=waiter, daemon=True)
        w.start()
        assert started.wait(WAIT)
        _wait_for(lambda: bool(lock._core._waiting), "the thread to wait for this process's hold")
        answers = FORK.Queue()

        def fork_children() -> None:
            procs.start(FORK, workers.try_release, lock, answers)
            procs.start(FORK, workers.try_acquire, lock, answers, 0)

        if fork_from == "holder":
            fork_children()
        else:
            f = threading.Thread(target=fork_children)
            f.start()
            f.join(WAIT)
        got = sorted((answers.get(timeout=WAIT), answers.get(timeout=WAIT)), key=str)
        assert got == [(False, False, None), "NotHeldError"]
        assert procs.join_all() == [0, 0]
        assert lock.held  # the children's attempts left our hold alone
        assert results == []  # and the waiting thread still waits
        assert lock.locked()
    finally:
        lock.release()
    w.join(WAIT)
    assert not w.is_alive()
    assert results == [True]


# -- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("objects", ["one", "several"])
def test_sixteen_threads_count_exactly(make_lock: MakeLock, objects: str) -> None:
    threads, holds = 16, 200
    shared = make_lock("same")
    locks = [shared if objects == "one" else make_lock("same") for _ in range(threads)]
    state = {"n": 0, "inside": 0, "overlaps": 0}
    tokens: list[int] = []
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(lock: crosslock.Lock) -> None:
        try:
            barrier.wait(WAIT)
            for i in range(holds):
                with lock:
                    state["inside"] += 1
                    if state["inside"] != 1:
                        state["overlaps"] += 1
                    if i % 20 == 0:
                        token = lock.token
                        assert token is not None
                        tokens.append(token)
                    state["n"] += 1
                    state["inside"] -= 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(lock,), daemon=True) for lock in locks]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    assert not any(t.is_alive() for t in ts), "a thread hangs"
    assert errors == []
    assert state == {"n": threads * holds, "inside": 0, "overlaps": 0}
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens) == threads * holds // 20
    assert not shared.locked()


def test_reentrancy_depth_1000(make_lock: MakeLock) -> None:
    lock = make_lock()
    for _ in range(1000):
        assert lock.acquire(timeout=0)
    token = lock.token
    assert token is not None
    seen: list[bool] = []

    def probe() -> None:
        seen.append(lock.acquire(timeout=0))

    t = threading.Thread(target=probe)
    t.start()
    t.join(WAIT)
    for i in range(999):
        lock.release()
        assert lock.held, f"released too early, after {i + 1} releases"
    assert lock.token == token  # one hold all along
    t = threading.Thread(target=probe)
    t.start()
    t.join(WAIT)
    lock.release()
    assert not lock.held
    assert lock.token is None
    with pytest.raises(crosslock.NotHeldError):
        lock.release()
    assert seen == [False, False]  # another thread never got in at any depth
    assert not lock.locked()


def test_release_from_a_thread_that_does_not_hold(make_lock: MakeLock) -> None:
    lock = make_lock()
    acquired, release, done = threading.Event(), threading.Event(), threading.Event()
    holder_view: list[bool] = []

    def holder() -> None:
        assert lock.acquire(timeout=WAIT)
        assert lock.acquire(timeout=WAIT)  # depth 2
        acquired.set()
        release.wait(WAIT)
        holder_view.append(lock.held)
        lock.release()
        holder_view.append(lock.held)
        lock.release()
        holder_view.append(lock.held)
        done.set()

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    try:
        assert acquired.wait(WAIT)
        for _ in range(3):
            with pytest.raises(crosslock.NotHeldError, match="another thread"):
                lock.release()
        assert not lock.held
        assert lock.locked()
        assert lock.acquire(timeout=0) is False
    finally:
        release.set()
    assert done.wait(WAIT)
    t.join(WAIT)
    # The foreign releases took nothing away: the holder still had both levels.
    assert holder_view == [True, True, False]
    assert lock.acquire(timeout=0)
    lock.release()
