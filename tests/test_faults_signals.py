"""Fault injection: signals that hit a waiting process, and waits that time out.

The waiting process is a child whose main thread waits in ``acquire()``: a
``python -c`` subprocess talking over stdin/stdout, or, for the
multiprocessing backend (whose lock only passes to multiprocessing children
at their start), a forked multiprocessing child talking over a Pipe. The test
process holds the lock meanwhile.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import pytest

import crosslock

from . import workers
from .conftest import WAIT, Procs

MakeLock = Callable[..., crosslock.Lock]
FORK = multiprocessing.get_context("fork")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoLine(AssertionError):
    """The child said nothing within the time given."""


class Child:
    """A child process running a worker of tests/workers.py that talks in lines."""

    def __init__(self, func: str, lock: crosslock.Lock | list[crosslock.Lock], *args: Any) -> None:
        backend = lock[0].backend if isinstance(lock, list) else lock.backend
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._mp: Any = None
        self._conn: Any = None
        if backend == "multiprocessing":
            self._conn, child_conn = FORK.Pipe()
            self._mp = FORK.Process(
                target=getattr(workers, func), args=(lock, *args, child_conn), daemon=True
            )
            self._mp.start()
            self.pid: int = self._mp.pid
            return
        code = (
            "import pickle, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "from tests import workers\n"
            f"lock = pickle.loads(bytes.fromhex({pickle.dumps(lock).hex()!r}))\n"
            f"workers.{func}(lock, *{args!r}, None)\n"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        threading.Thread(target=self._read, args=(self._proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self._proc.stderr, False), daemon=True).start()

    def _read(self, stream: IO[str], lines: bool) -> None:
        for line in stream:
            if lines:
                self._lines.put(line.rstrip("\n"))
            else:
                self._stderr.append(line)
        if lines:
            self._lines.put(None)  # end of output

    def line(self, timeout: float = WAIT) -> str:
        """The child's next line; fails when none comes within ``timeout``."""
        if self._conn is not None:
            if not self._conn.poll(timeout):
                raise NoLine("the child said nothing in time")
            answer: str = self._conn.recv()
            return answer
        try:
            got = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise NoLine("the child said nothing in time") from None
        assert got is not None, f"the child ended its output; stderr: {''.join(self._stderr)[-2000:]}"
        return got

    def say(self, line: str) -> None:
        if self._conn is not None:
            self._conn.send(line)
            return
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def wait(self, timeout: float = WAIT) -> int | None:
        """The exit status once the child ends (None if it does not within ``timeout``)."""
        if self._mp is not None:
            self._mp.join(timeout)
            code: int | None = self._mp.exitcode
            return code
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self._mp is not None:
            if self._mp.is_alive():
                self._mp.kill()
            self._mp.join(5)
            return
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(5)
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(func: str, lock: crosslock.Lock | list[crosslock.Lock], *args: Any) -> Child:
        child = Child(func, lock, *args)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.kill()


def _signal_until(child: Child, signum: int, expected: str) -> None:
    """Send ``signum`` until the child answers, and check the answer.

    A signal that lands just before the child's blocking call starts is only
    handled once that call returns (CPython cannot do better), so the first
    one may go unanswered for as long as the wait lasts: send it again, every
    half second, within the usual bound. The workers ignore the repeats.
    """
    for _ in range(int(WAIT / 0.5)):
        os.kill(child.pid, signum)
        try:
            answer = child.line(timeout=0.5)
        except NoLine:
            continue  # no answer yet: send again
        assert answer == expected
        return
    raise AssertionError(f"the child never answered signal {signum}")


# -- Ctrl-C while waiting ---------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["forever", "timeout"])
def test_sigint_interrupts_a_waiting_acquire(
    make_lock: MakeLock, children: Callable[..., Child], timeout: float | None
) -> None:
    # Several locks, each interrupted once while this process holds them all: every
    # interrupt is another chance to land somewhere awkward (while a helper starts,
    # say), and nothing an earlier interrupt left behind can mend a later one.
    locks = [make_lock() for _ in range(4)]
    for lock in locks:
        assert lock.acquire(timeout=WAIT)
    try:
        child = children("interrupted_waiter", locks, timeout)
        for _ in locks:
            child.say("wait")
            assert child.line() == "waiting"
            _signal_until(child, signal.SIGINT, "interrupted held=False")
    finally:
        for lock in locks:
            lock.release()
    # Whatever the interrupted waits left behind (helpers still parked in the kernel,
    # pending requests) must not turn into holds: every lock is free for this process.
    for lock in locks:
        assert lock.acquire(timeout=WAIT), f"{lock.name} is still held by the interrupted process"
        lock.release()
    # The interrupted process can still use the locks normally, and releases them for real.
    child.say("go")
    for _ in locks:
        assert child.line() == "acquired=True held=True"
    assert child.line() == "released held=False"
    for lock in locks:
        assert lock.acquire(timeout=WAIT)
        lock.release()
    child.say("exit")
    assert child.wait() == 0


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["forever", "timeout"])
def test_signal_handler_that_returns_does_not_end_the_wait(
    make_lock: MakeLock, children: Callable[..., Child], timeout: float | None
) -> None:
    lock = make_lock()
    assert lock.acquire(timeout=WAIT)
    try:
        child = children("signalled_waiter", lock, timeout)
        assert child.line() == "waiting"
        for _ in range(3):
            _signal_until(child, signal.SIGUSR1, "usr1")  # handled while the child waits
    finally:
        lock.release()
    # The wait went on through the signals and ends with the release, granted
    # (late repeats of the signal may still say "usr1" first).
    answer = child.line()
    while answer == "usr1":
        answer = child.line()
    assert answer == "got=True held=True"
    child.say("exit")
    assert child.wait() == 0
    assert lock.acquire(timeout=WAIT)
    lock.release()


# -- timed-out waits --------------------------------------------------------------------------


def test_timed_out_waiter_leaves_no_late_hold(
    make_lock: MakeLock, children: Callable[..., Child], procs: Procs
) -> None:
    lock = make_lock()
    assert lock.acquire(timeout=WAIT)
    try:
        waiter = children("timed_out_waiter", lock, 0.05, 3)
        assert waiter.line() == "results=[False, False, False] held=False"
    finally:
        lock.release()
    # The timed-out process lives on; a third process must still get the lock.
    result = FORK.Queue()
    procs.start(FORK, workers.try_acquire, lock, result, WAIT)
    got, held_before, _token = result.get(timeout=WAIT)
    assert (got, held_before) == (True, False)
    waiter.say("check")
    assert waiter.line() == "held=False"
    assert lock.acquire(timeout=WAIT)  # and this one too
    lock.release()
    waiter.say("exit")
    assert waiter.wait() == 0
    assert procs.join_all() == [0]


@pytest.mark.parametrize("sigurg", ["default", "handled", "blocked"])
def test_timed_waits_of_the_main_thread_end_at_the_deadline_or_the_release(
    lock_dir: str, children: Callable[..., Child], sigurg: str
) -> None:
    # A file lock's timed wait in the main thread blocks in the kernel itself and
    # is ended at the deadline by a signal (SIGURG) to that thread; a program that
    # handles or blocks SIGURG keeps it, and its waits go to a helper thread.
    lock = crosslock.Lock(os.path.join(lock_dir, "deadline.lock"))
    assert lock.acquire(timeout=WAIT)
    try:
        child = children("deadline_waiter", lock, sigurg)
        # Deadlines of a few microseconds and more: many pass just before the
        # kernel call starts, where the signal cannot interrupt it (a hang, if
        # nothing sent it again).
        assert child.line() == "timeouts=[False] held=False"
        assert child.line() == "waiting"
    finally:
        lock.release()
    if sigurg == "default":
        # No helper thread ever waited: the release itself woke the main thread.
        expected = "got=True held=True threads=['crosslock-timer'] kept=False calls=0"
    else:
        expected = "got=True held=True threads=['crosslock-wait'] kept=True calls=0"
    assert child.line() == expected
    child.say("exit")
    assert child.wait() == 0
