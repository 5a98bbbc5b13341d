"""crosslock._speedups: the file backend's paired system calls (Linux, when built).

Its calls are checked against real descriptors: flock on a file, and an epoll
descriptor standing for the inotify check (an empty one is quiet; one
watching a pipe with a byte in it has something queued).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import platform
import select
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import crosslock
from crosslock._backends import _watch

from .conftest import WAIT, Procs

try:
    from crosslock import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]

if sys.platform.startswith("linux") and os.environ.get("CI") and _speedups is None:
    raise AssertionError("crosslock._speedups was not built: the C module is part of the Linux build")

pytestmark = pytest.mark.skipif(_speedups is None, reason="crosslock._speedups is not built here")


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds (an observed state, not a guessed delay)."""
    deadline = time.monotonic() + WAIT
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.001)


@pytest.fixture
def files(tmp_path: Any) -> Iterator[tuple[int, int]]:
    """Two descriptors (two open file descriptions) of one lock file."""
    path = str(tmp_path / "x.lock")
    a = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    b = os.open(path, os.O_RDWR)
    yield a, b
    os.close(a)
    os.close(b)


@pytest.fixture
def quiet() -> Iterator[int]:
    """An epoll descriptor with nothing queued."""
    epoll = select.epoll()
    yield epoll.fileno()
    epoll.close()


@pytest.fixture
def queued() -> Iterator[int]:
    """An epoll descriptor with something queued."""
    r, w = os.pipe()
    epoll = select.epoll()
    epoll.register(r, select.EPOLLIN)
    os.write(w, b"x")
    yield epoll.fileno()
    epoll.close()
    os.close(r)
    os.close(w)


def _B(fd: int, quick: int) -> Any:
    """What grab() and drop() read of a file backend: its descriptor, its quick check."""
    return types.SimpleNamespace(_fd=fd, _quick=quick)


def _free(fd: int) -> bool:
    """Whether the lock file of ``fd`` can be locked through ``fd`` now (left unlocked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


# Linux's number of the flock system call, to see a thread blocked in it.
_FLOCK_NR = {"x86_64": 73, "aarch64": 32}.get(platform.machine())


def _in_flock(tid: int) -> bool:
    with open(f"/proc/self/task/{tid}/syscall") as f:
        return f.read().split()[0] == str(_FLOCK_NR)


def test_the_module_is_what_file_locks_use() -> None:
    lock = crosslock.Lock("speedups-in-use")
    in_use = not os.environ.get("CROSSLOCK_NO_SPEEDUPS")
    assert (lock._fast is not None) is in_use
    assert (_watch.speedups is not None) is in_use
    assert (crosslock.Lock("speedups-in-use", timeout=1)._fast is not None) is in_use
    # Shared locks take the core's own path.
    assert crosslock.Lock("speedups-in-use", shared=True)._fast is None


def test_grab_on_a_quiet_check_is_granted(files: tuple[int, int], quiet: int) -> None:
    a, b = files
    assert _speedups.grab(_B(a, quiet), fcntl.LOCK_EX) == _speedups.GRANTED
    assert not _free(b)
    assert _speedups.drop(_B(a, quiet)) is True
    assert _free(b)


def test_grab_with_something_queued_holds_but_asks_for_the_check(files: tuple[int, int], queued: int) -> None:
    a, b = files
    assert _speedups.grab(_B(a, queued), fcntl.LOCK_EX) == _speedups.UNCHECKED
    assert not _free(b)
    assert _speedups.grab(_B(a, -1), fcntl.LOCK_UN) == _speedups.UNCHECKED  # no check: unchecked
    assert _free(b)


def test_a_drain_under_way_makes_every_check_unquiet(files: tuple[int, int], quiet: int) -> None:
    a, _ = files
    assert _speedups.drains(1) == 1
    try:
        assert _speedups.grab(_B(a, quiet), fcntl.LOCK_EX) == _speedups.UNCHECKED
        assert _speedups.drop(_B(a, quiet)) is False
    finally:
        assert _speedups.drains(-1) == 0
    assert _speedups.drop(_B(a, quiet)) is True


def test_drop_with_something_queued_keeps_the_lock(files: tuple[int, int], queued: int) -> None:
    a, b = files
    fcntl.flock(a, fcntl.LOCK_EX)
    assert _speedups.drop(_B(a, queued)) is False
    assert _speedups.drop(_B(a, -1)) is False
    assert not _free(b)  # still held: the caller checks the path, then unlocks
    fcntl.flock(a, fcntl.LOCK_UN)


def test_grab_of_a_held_file_without_waiting_is_busy(files: tuple[int, int], quiet: int) -> None:
    a, b = files
    fcntl.flock(b, fcntl.LOCK_EX)
    assert _speedups.grab(_B(a, quiet), fcntl.LOCK_EX | fcntl.LOCK_NB) == _speedups.BUSY
    fcntl.flock(b, fcntl.LOCK_UN)
    assert _free(a)


def test_bad_descriptors(files: tuple[int, int], quiet: int) -> None:
    assert _speedups.grab(_B(-1, quiet), fcntl.LOCK_EX) == _speedups.NO_FD
    with pytest.raises(OSError, match="Invalid argument"):  # no such operation
        _speedups.grab(_B(files[0], quiet), 0)
    with pytest.raises(OSError, match="Bad file descriptor"):  # nothing to unlock
        _speedups.drop(_B(-1, quiet))
    with pytest.raises(OverflowError, match="descriptor out of range"):
        _speedups.grab(_B(2**40, quiet), fcntl.LOCK_EX)
    with pytest.raises(TypeError):
        _speedups.grab(_B(files[0], quiet))  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        _speedups.drop(object())


@pytest.mark.skipif(_FLOCK_NR is None, reason="flock's system call number is not known here")
def test_the_check_reads_the_backend_after_the_wait(files: tuple[int, int], quiet: int) -> None:
    """A file marked (by a drain in another thread) while grab() waited is unchecked."""
    a, b = files
    fcntl.flock(b, fcntl.LOCK_EX)
    backend = _B(a, quiet)
    main = threading.get_native_id()

    def mark_then_release() -> None:
        _wait_for(lambda: _in_flock(main), "the main thread to block in flock")
        backend._quick = -1
        fcntl.flock(b, fcntl.LOCK_UN)

    helper = threading.Thread(target=mark_then_release, daemon=True)
    helper.start()
    try:
        assert _speedups.grab(backend, fcntl.LOCK_EX) == _speedups.UNCHECKED
    finally:
        helper.join(WAIT)
    assert not helper.is_alive()
    fcntl.flock(a, fcntl.LOCK_UN)


@pytest.mark.skipif(_FLOCK_NR is None, reason="flock's system call number is not known here")
@pytest.mark.parametrize("raises", [False, True], ids=["handler-returns", "handler-raises"])
def test_a_signal_during_a_blocking_grab(files: tuple[int, int], quiet: int, raises: bool) -> None:
    """A handler that returns lets the wait go on (PEP 475); one that raises ends it."""
    a, b = files
    fcntl.flock(b, fcntl.LOCK_EX)
    handled = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        handled.set()
        if raises:
            raise InterruptedError("raised by the handler")

    main = threading.get_native_id()

    def poke() -> None:
        _wait_for(lambda: _in_flock(main), "the main thread to block in flock")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        assert handled.wait(WAIT)
        if not raises:
            _wait_for(lambda: _in_flock(main), "the main thread to block in flock again")
        fcntl.flock(b, fcntl.LOCK_UN)

    old = signal.signal(signal.SIGUSR1, handler)
    helper = threading.Thread(target=poke, daemon=True)
    try:
        helper.start()
        if raises:
            with pytest.raises(InterruptedError, match="raised by the handler"):
                _speedups.grab(_B(a, quiet), fcntl.LOCK_EX)
        else:
            assert _speedups.grab(_B(a, quiet), fcntl.LOCK_EX) == _speedups.GRANTED
            fcntl.flock(a, fcntl.LOCK_UN)
    finally:
        helper.join(WAIT)
        signal.signal(signal.SIGUSR1, old)
    assert not helper.is_alive()
    assert _free(a)


def _drains_in_child(conn: Any) -> None:
    conn.send(_speedups.drains(0))


@pytest.mark.skipif(_watch.speedups is None, reason="crosslock does not use the module here")
def test_a_drain_under_way_at_fork_is_not_under_way_in_the_child(procs: Procs) -> None:
    """A child forked while another thread drained the queue counts no drain."""
    fork = multiprocessing.get_context("fork")
    parent_conn, child_conn = fork.Pipe()
    assert _speedups.drains(1) == 1
    try:
        child = procs.start(fork, _drains_in_child, child_conn)
    finally:
        assert _speedups.drains(-1) == 0
    assert parent_conn.poll(WAIT), "the child did not answer"
    assert parent_conn.recv() == 0
    child.join(WAIT)
    assert child.exitcode == 0
