"""Fault injection on lock files and folders: removal, permissions, planted files, the default folder.

These run on the two backends that use a lock file, "file" and "filelock";
the multiprocessing backend and the server backends have no lock file, so
nothing here applies to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import multiprocessing
import os
import pathlib
import shutil
import stat
import tempfile
from typing import Any

import pytest

import crosslock
from crosslock import _paths

from . import workers
from .conftest import WAIT, Procs

FILE_BACKENDS = ["file", "filelock"]
FORK = multiprocessing.get_context("fork")
ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="needs root (to act as another user)")

pytest.importorskip("filelock")


@pytest.fixture(params=FILE_BACKENDS)
def file_backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _warm_up(backend: str) -> None:
    """Import everything a backend needs while we are root: user nobody cannot read
    this interpreter's standard library, so a forked child as nobody must not import."""
    folder = tempfile.mkdtemp(prefix="crosslock-warm-")
    try:
        lock = crosslock.Lock(os.path.join(folder, "w.lock"), backend=backend)
        with lock:
            assert lock.token is not None
        with contextlib.suppress(FileNotFoundError):
            crosslock.Lock(os.path.join(folder, "missing", "w.lock"), backend=backend)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _use(path: str, backend: str) -> str:
    """Open the lock at ``path``, take it once, read its token, release it."""
    lock = crosslock.Lock(path, backend=backend)
    assert lock.acquire(timeout=0)
    try:
        token = lock.token
    finally:
        lock.release()
    return f"token={token}"


def _take_once(lock: crosslock.Lock) -> None:
    """Take ``lock`` if free, read its token (which writes the lock file), release it."""
    if lock.acquire(timeout=0):
        try:
            _ = lock.token
        finally:
            lock.release()


def _snapshot(path: pathlib.Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_size, stat.S_IMODE(st.st_mode), st.st_nlink


# -- the folder or the file goes away -------------------------------------------------------


def _held_then_folder_removed(
    tmp_path: pathlib.Path, backend: str
) -> tuple[crosslock.Lock, pathlib.Path, str]:
    """A lock held on ``tmp_path/sub/x.lock``, whose file and folder are then removed."""
    folder = tmp_path / "sub"
    folder.mkdir()
    path = str(folder / "x.lock")
    lock = crosslock.Lock(path, backend=backend)
    assert lock.acquire(timeout=0)
    os.unlink(path)
    os.rmdir(folder)
    return lock, folder, path


def test_parent_folder_removed_while_held(tmp_path: pathlib.Path, file_backend: str) -> None:
    lock, folder, path = _held_then_folder_removed(tmp_path, file_backend)
    assert not lock.held  # the loss is known at once
    with pytest.raises(crosslock.LockLost, match="removed or replaced"):
        lock.release()
    with pytest.raises(crosslock.NotHeldError):
        lock.release()
    del lock
    gc.collect()
    with pytest.raises(FileNotFoundError, match=str(folder)):
        crosslock.Lock(path, backend=file_backend)
    assert not folder.exists()  # never created silently
    folder.mkdir()
    with crosslock.Lock(path, backend=file_backend) as again:
        assert again.held


def test_lost_lock_does_not_recreate_its_folder(tmp_path: pathlib.Path, file_backend: str) -> None:
    lock, folder, _ = _held_then_folder_removed(tmp_path, file_backend)
    with pytest.raises(crosslock.LockLost):
        lock.release()
    # The same Lock object, used again: the missing folder is an error, never created.
    with pytest.raises(FileNotFoundError, match=str(folder)):
        lock.acquire(timeout=0)
    assert not folder.exists(), "the lock's folder was created silently"
    assert not lock.held


def test_lock_file_removed_while_three_processes_wait(
    tmp_path: pathlib.Path, file_backend: str, procs: Procs
) -> None:
    path, marker = str(tmp_path / "x.lock"), str(tmp_path / "inside")
    holder = crosslock.Lock(path, backend=file_backend)
    assert holder.acquire(timeout=0)
    result = FORK.Queue()
    opened = [FORK.Event() for _ in range(3)]
    for event in opened:
        procs.start(FORK, workers.converging_waiter, path, file_backend, marker, 20, event, result)
    for event in opened:
        assert event.wait(WAIT)  # each waiter has the current file open
    os.unlink(path)  # a third party removes the lock file while they wait
    with pytest.raises(crosslock.LockLost):
        holder.release()
    results = [result.get(timeout=WAIT) for _ in opened]
    # Every waiter got all its holds, never two at once, none lost: one file for all.
    assert results == [(20, 0, 0)] * 3
    assert procs.join_all() == [0, 0, 0]
    assert os.path.isfile(path)
    with holder:
        assert holder.held


# -- permissions ----------------------------------------------------------------------------


def _read_only_session(path: str, backend: str) -> list[Any]:
    seen: list[Any] = []
    lock = crosslock.Lock(path, backend=backend)
    try:
        seen.append(("acquire", lock.acquire(timeout=0)))
    except PermissionError as exc:
        seen.append(("acquire", "PermissionError", path in str(exc), lock.held))
        return seen
    probe = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append("not excluded")
    except BlockingIOError:
        seen.append("excluded")
    finally:
        os.close(probe)
    try:
        seen.append(("token", lock.token))
    except PermissionError as exc:
        seen.append(("token", "PermissionError", path in str(exc)))
    seen.append(("held", lock.held))
    lock.release()
    seen.append(("held", lock.held))
    return seen


@ROOT_ONLY
def test_read_only_lock_file_used_by_nobody(open_dir: pathlib.Path, file_backend: str) -> None:
    path = open_dir / "ro.lock"
    path.write_bytes(b"")
    os.chmod(path, 0o444)
    _warm_up(file_backend)
    kind, seen = workers.in_child(_read_only_session, str(path), file_backend, as_nobody=True)
    assert kind == "ok", seen
    if file_backend == "filelock" and seen[0][1] == "PermissionError":
        # The filelock package needs write access to its lock file: a clear error
        # naming the path, and nothing held.
        assert seen == [("acquire", "PermissionError", True, False)]
    else:
        assert seen == [
            ("acquire", True),
            "excluded",  # a read-only descriptor still locks
            ("token", "PermissionError", True),
            ("held", True),  # the failed token read took nothing away
            ("held", False),
        ]
    assert path.read_bytes() == b""
    with crosslock.Lock(str(path), backend=file_backend, timeout=0):
        pass  # nothing left half-held


# -- planted files --------------------------------------------------------------------------


@pytest.fixture
def sticky_dir(open_dir: pathlib.Path) -> pathlib.Path:
    """A world-writable sticky folder like /tmp, with a victim file owned by root."""
    shared = open_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = open_dir / "victim"
    victim.write_bytes(b"root's data\n")
    os.chmod(victim, 0o644)
    return shared


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_planted_symlink_is_refused(sticky_dir: pathlib.Path, file_backend: str, user: str) -> None:
    if user == "nobody" and os.getuid() != 0:
        pytest.skip("needs root to switch to user nobody")
    victim = sticky_dir.parent / "victim"
    before = _snapshot(victim)
    path = sticky_dir / "x.lock"
    path.symlink_to(victim)
    _warm_up(file_backend)
    kind, message = workers.in_child(_use, str(path), file_backend, as_nobody=user == "nobody")
    assert kind == "LockError", message
    assert "symlink" in message
    assert _snapshot(victim) == before
    assert path.is_symlink()  # left alone, not removed


def test_symlink_planted_between_holds_is_refused(sticky_dir: pathlib.Path, file_backend: str) -> None:
    victim = sticky_dir.parent / "victim"
    before = _snapshot(victim)
    path = sticky_dir / "x.lock"
    lock = crosslock.Lock(str(path), backend=file_backend)
    with lock:
        pass
    path.unlink()
    path.symlink_to(victim)  # swapped in while nobody holds the lock
    with pytest.raises(crosslock.LockError, match="symlink"):
        _take_once(lock)
    assert _snapshot(victim) == before
    assert not lock.held


def test_dangling_symlink_creates_nothing(sticky_dir: pathlib.Path, file_backend: str) -> None:
    target = sticky_dir.parent / "created-through-the-link"
    path = sticky_dir / "x.lock"
    path.symlink_to(target)
    with pytest.raises(crosslock.LockError, match="symlink"):
        _use(str(path), file_backend)
    assert not os.path.lexists(target)


@pytest.mark.parametrize("when", ["before", "between-holds"])
def test_planted_hard_link_is_refused(tmp_path: pathlib.Path, file_backend: str, when: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")  # an empty file: the kind a fencing token could be written into
    before = _snapshot(victim)
    path = tmp_path / "x.lock"
    error: BaseException | None = None
    try:
        if when == "before":
            os.link(victim, path)
            _use(str(path), file_backend)
        else:
            lock = crosslock.Lock(str(path), backend=file_backend)
            with lock:
                pass
            path.unlink()
            os.link(victim, path)  # swapped in while nobody holds the lock
            _take_once(lock)
    except crosslock.LockError as exc:
        error = exc
    assert _snapshot(victim)[:2] == before[:2], "the victim file was written through the hard link"
    assert isinstance(error, crosslock.LockError), "a hard-linked lock file was used"
    assert "hard link" in str(error)


def _construct(path: str, backend: str) -> str:
    crosslock.Lock(path, backend=backend)
    return "constructed"


def _acquire_once(lock: crosslock.Lock) -> bool:
    got = lock.acquire(timeout=0)
    if got:
        lock.release()
    return got


def test_fifo_at_lock_path_fails_at_once(tmp_path: pathlib.Path, file_backend: str) -> None:
    path = tmp_path / "x.lock"
    os.mkfifo(path)
    kind, message = workers.in_child(_construct, str(path), file_backend)  # bounded: a hang fails
    assert kind == "LockError", message
    assert "FIFO" in message
    assert str(path) in message


def test_fifo_planted_between_holds_fails_at_once(tmp_path: pathlib.Path, file_backend: str) -> None:
    path = tmp_path / "x.lock"
    lock = crosslock.Lock(str(path), backend=file_backend)
    with lock:
        pass
    path.unlink()
    os.mkfifo(path)
    kind, message = workers.in_child(_acquire_once, lock)  # bounded: a hang fails
    assert kind == "LockError", message
    assert "FIFO" in message


# -- the default lock directory ---------------------------------------------------------------


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch, open_dir: pathlib.Path) -> pathlib.Path:
    """No CROSSLOCK_DIR: the default folder goes to a sticky temp dir of our own."""
    tmp = open_dir / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    monkeypatch.delenv("CROSSLOCK_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    _paths._checked.clear()
    return tmp


@ROOT_ONLY
@pytest.mark.parametrize("mode", [0o700, 0o777])
def test_default_dir_of_another_user_is_refused(
    fresh_default: pathlib.Path, file_backend: str, mode: int
) -> None:
    folder = fresh_default / f"crosslock-{os.getuid()}"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    os.chmod(folder, mode)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        crosslock.Lock("theirs", backend=file_backend)
    st = os.lstat(folder)
    assert stat.S_IMODE(st.st_mode) == mode  # someone else's folder: not touched
    assert st.st_uid == 65534
    assert list(folder.iterdir()) == []


@ROOT_ONLY
def test_runtime_dir_of_another_user_is_refused(
    monkeypatch: pytest.MonkeyPatch, open_dir: pathlib.Path, file_backend: str
) -> None:
    monkeypatch.delenv("CROSSLOCK_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(open_dir))
    _paths._checked.clear()
    folder = open_dir / "crosslock"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        crosslock.Lock("theirs", backend=file_backend)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o701])
def test_default_dir_loose_permissions_are_fixed(
    fresh_default: pathlib.Path, file_backend: str, mode: int
) -> None:
    folder = fresh_default / f"crosslock-{os.getuid()}"
    folder.mkdir()
    os.chmod(folder, mode)
    with crosslock.Lock("loose", backend=file_backend) as lock:
        assert os.path.dirname(lock.name) == str(folder)
    st = os.lstat(folder)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()


def _default_lock_name(backend: str) -> str:
    with crosslock.Lock("mine", backend=backend) as lock:
        return lock.name


@ROOT_ONLY
def test_default_dir_as_nobody(fresh_default: pathlib.Path, file_backend: str) -> None:
    _warm_up(file_backend)
    folder = fresh_default / "crosslock-65534"
    # Pre-created by root (someone else, for nobody): refused.
    folder.mkdir(mode=0o700)
    kind, message = workers.in_child(_default_lock_name, file_backend, as_nobody=True)
    assert kind == "PermissionError", message
    assert "owned by uid 0" in message
    # Made by nobody itself: private and owned by nobody.
    folder.rmdir()
    kind, name = workers.in_child(_default_lock_name, file_backend, as_nobody=True)
    assert kind == "ok", name
    assert name == str(folder / "mine.lock")
    st = os.lstat(folder)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 65534)
