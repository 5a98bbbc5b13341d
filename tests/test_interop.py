"""Interoperation with other programs that lock the same file: util-linux flock(1),
the filelock package and portalocker.

All of them use flock(2) on Linux, as crosslock's file backend does (and its
filelock backend, through filelock), so they must exclude each other in both
directions. The other program runs as a separate process; it says ``ready``
once it holds the lock and lets go when it reads a line.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

import crosslock

from .conftest import WAIT

#: crosslock backends that lock the file itself (multiprocessing and the servers
#: have no lock file another program could use).
FILE_BACKENDS = ["file", "filelock"]

_FILELOCK_HOLD = (
    "import sys, filelock\n"
    "lock = filelock.FileLock(sys.argv[1])\n"
    "lock.acquire(timeout=30)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "lock.release()\n"
)
_FILELOCK_TRY = (
    "import sys, filelock\n"
    "try:\n"
    "    filelock.FileLock(sys.argv[1]).acquire(timeout=0.1)\n"
    "except filelock.Timeout:\n"
    "    sys.exit(1)\n"
)
_PORTALOCKER_LOCK_HOLD = (
    "import sys, portalocker\n"
    "lock = portalocker.Lock(sys.argv[1], timeout=30)\n"
    "lock.acquire()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "lock.release()\n"
)
_PORTALOCKER_LOCK_TRY = (
    "import sys, portalocker\n"
    "try:\n"
    "    portalocker.Lock(sys.argv[1], timeout=0.1, fail_when_locked=True).acquire()\n"
    "except portalocker.LockException:\n"
    "    sys.exit(1)\n"
)
_PORTALOCKER_FN_HOLD = (
    "import sys, portalocker\n"
    "f = open(sys.argv[1], 'a')\n"
    "portalocker.lock(f, portalocker.LOCK_EX)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "portalocker.unlock(f)\n"
)
_PORTALOCKER_FN_TRY = (
    "import sys, portalocker\n"
    "f = open(sys.argv[1], 'a')\n"
    "try:\n"
    "    portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)\n"
    "except portalocker.LockException:\n"
    "    sys.exit(1)\n"
)

#: peer -> (command holding PATH until a line comes, command trying PATH once: exit 1 if held)
PEERS: dict[str, tuple[Callable[[str], list[str]], Callable[[str], list[str]]]] = {
    "flock(1)": (
        lambda p: ["flock", "-x", p, "-c", "echo ready; read line"],
        lambda p: ["flock", "-x", "-n", p, "true"],
    ),
    "filelock": (
        lambda p: [sys.executable, "-c", _FILELOCK_HOLD, p],
        lambda p: [sys.executable, "-c", _FILELOCK_TRY, p],
    ),
    "portalocker.Lock": (
        lambda p: [sys.executable, "-c", _PORTALOCKER_LOCK_HOLD, p],
        lambda p: [sys.executable, "-c", _PORTALOCKER_LOCK_TRY, p],
    ),
    "portalocker.lock": (
        lambda p: [sys.executable, "-c", _PORTALOCKER_FN_HOLD, p],
        lambda p: [sys.executable, "-c", _PORTALOCKER_FN_TRY, p],
    ),
}


def _need(peer: str) -> None:
    if peer == "flock(1)":
        if shutil.which("flock") is None:
            pytest.skip("util-linux flock is not installed")
    elif peer.startswith("portalocker"):
        pytest.importorskip("portalocker")
    else:
        pytest.importorskip(peer)


class External:
    """Another program holding the lock file: says ``ready``, lets go on a line."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def wait_ready(self) -> None:
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("the other program never said it holds the lock") from None
        if line != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=WAIT)
            raise AssertionError(f"the other program said {line!r}; stderr: {err[-2000:]}")

    def let_go(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def external() -> Iterator[Callable[[list[str]], External]]:
    started: list[External] = []

    def start(argv: list[str]) -> External:
        peer = External(argv)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.kill()


def _try(argv: list[str]) -> int:
    """Exit status of a one-shot try of the other program (1: the lock is held)."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT).returncode


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("peer", list(PEERS))
def test_other_program_holding_excludes_crosslock(
    tmp_path: pathlib.Path, external: Callable[[list[str]], External], peer: str, backend: str
) -> None:
    _need(peer)
    path = str(tmp_path / "x.lock")
    lock = crosslock.Lock(path, backend=backend)
    with lock:
        before = lock.token
    holder = external(PEERS[peer][0](path))
    holder.wait_ready()
    assert lock.locked()
    assert lock.acquire(timeout=0.1) is False
    assert lock.acquire(blocking=False) is False
    assert not lock.held
    assert holder.let_go() == 0
    assert lock.acquire(timeout=WAIT)  # free again once the other program let go
    try:
        # The other program left crosslock's record (the token counter) intact.
        assert before is not None
        assert lock.token == before + 1
    finally:
        lock.release()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("peer", list(PEERS))
def test_crosslock_holding_excludes_other_program(tmp_path: pathlib.Path, peer: str, backend: str) -> None:
    _need(peer)
    path = str(tmp_path / "x.lock")
    probe = PEERS[peer][1](path)
    lock = crosslock.Lock(path, backend=backend)
    with lock:
        assert _try(probe) == 1
    assert _try(probe) == 0  # and the same try succeeds once crosslock let go


def test_flock_shared_and_crosslock_shared(
    tmp_path: pathlib.Path, external: Callable[[list[str]], External]
) -> None:
    _need("flock(1)")
    path = str(tmp_path / "x.lock")
    reader = crosslock.Lock(path, shared=True)
    writer = crosslock.Lock(path)
    with reader:
        assert _try(["flock", "-s", "-n", path, "true"]) == 0  # readers share
        assert _try(["flock", "-x", "-n", path, "true"]) == 1  # a writer waits
    holder = external(["flock", "-s", path, "-c", "echo ready; read line"])
    holder.wait_ready()
    assert reader.acquire(timeout=0.1)  # shares with flock's shared hold
    reader.release()
    assert writer.acquire(timeout=0.1) is False
    assert holder.let_go() == 0
    assert writer.acquire(timeout=WAIT)
    writer.release()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_filelock_in_the_same_process(tmp_path: pathlib.Path, backend: str) -> None:
    # They exclude each other within one process too: each opens its own
    # descriptor, and flock(2) locks belong to the open file, not to the process.
    # (So one thread holding a FileLock and another acquiring crosslock simply wait.)
    filelock = pytest.importorskip("filelock")
    path = str(tmp_path / "x.lock")
    theirs = filelock.FileLock(path)
    ours = crosslock.Lock(path, backend=backend)
    with theirs:
        assert ours.acquire(timeout=0.1) is False
    with ours, pytest.raises(filelock.Timeout):
        theirs.acquire(timeout=0.1)
    assert ours.acquire(timeout=0)
    ours.release()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_portalocker_in_the_same_process(tmp_path: pathlib.Path, backend: str) -> None:
    # As with filelock: separate descriptors, so they exclude each other in one process.
    portalocker = pytest.importorskip("portalocker")
    path = str(tmp_path / "x.lock")
    ours = crosslock.Lock(path, backend=backend)
    with portalocker.Lock(path, timeout=WAIT):
        assert ours.acquire(timeout=0.1) is False
    with open(path, "a") as f:
        # Blocking, not LOCK_NB: our timed-out wait above leaves a helper parked in
        # the kernel, which is granted the lock when portalocker lets go and gives
        # it back at once -- a try at that very moment may fail (docs/guarantees.md).
        portalocker.lock(f, portalocker.LOCK_EX)
        assert ours.acquire(timeout=0.1) is False
        portalocker.unlock(f)
    with ours:
        with pytest.raises(portalocker.LockException):
            portalocker.Lock(path, timeout=0.1, fail_when_locked=True).acquire()
        with open(path, "a") as f, pytest.raises(portalocker.LockException):
            portalocker.lock(f, portalocker.LOCK_EX | portalocker.LOCK_NB)
    assert ours.acquire(timeout=0)
    ours.release()
    assert os.path.isfile(path)
