"""The file backend: lock files, bad input, file races, shared locks, the default directory."""

from __future__ import annotations

import os
import socket
import stat
import threading
from typing import Any

import pytest

import crosslock
from crosslock import _paths

from . import workers
from .conftest import WAIT, Procs, collect_lock_while_holding

# -- names and paths ----------------------------------------------------------------------------


def test_bare_name_lives_in_default_dir(lock_dir: str) -> None:
    lock = crosslock.Lock("jobs")
    assert lock.name == os.path.join(os.path.realpath(lock_dir), "jobs.lock")
    assert os.path.isfile(lock.name)


def test_path_is_used_exactly(tmp_path: Any) -> None:
    path = tmp_path / "my.lck"
    lock = crosslock.Lock(path)
    assert lock.name == str(path)
    with lock:
        assert path.exists()
    assert path.exists()  # never deleted
    assert crosslock.Lock(str(path)).locked() is False


def test_lock_file_is_never_truncated_or_deleted(tmp_path: Any) -> None:
    path = tmp_path / "data.lock"
    lock = crosslock.Lock(path)
    with lock:
        pass
    path.write_bytes(b"")
    with lock:
        assert lock.token == 1
    content = path.read_bytes()
    with lock:
        pass  # a hold that never reads the token writes nothing
    assert path.read_bytes() == content
    with lock:
        assert lock.token == 2  # the counter lives in the file


def test_foreign_content_is_never_overwritten(tmp_path: Any) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("user data\n")
    lock = crosslock.Lock(path)
    with lock, pytest.raises(crosslock.LockError, match="did not write"):
        _ = lock.token
    assert path.read_text() == "user data\n"


def test_missing_parent_is_an_error(tmp_path: Any) -> None:
    missing = tmp_path / "nope" / "x.lock"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        crosslock.Lock(missing)
    assert not (tmp_path / "nope").exists()  # not created silently


def test_directory_is_an_error(tmp_path: Any) -> None:
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        crosslock.Lock(tmp_path)
    with pytest.raises(IsADirectoryError):
        crosslock.Lock(str(tmp_path) + os.sep)


def test_fifo_is_an_error_and_never_hangs(tmp_path: Any) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(crosslock.LockError, match="FIFO"):
        crosslock.Lock(fifo)


def test_socket_is_an_error(tmp_path: Any) -> None:
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        with pytest.raises(crosslock.LockError, match="socket"):
            crosslock.Lock(path)


def test_planted_symlink_is_refused(tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("secret")
    link = tmp_path / "x.lock"
    link.symlink_to(victim)
    with pytest.raises(crosslock.LockError, match="symlink"):
        crosslock.Lock(link)
    assert victim.read_text() == "secret"


def test_planted_hard_link_is_refused(tmp_path: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    os.link(victim, tmp_path / "x.lock")
    with pytest.raises(crosslock.LockError, match="hard links"):
        crosslock.Lock(tmp_path / "x.lock")


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_bad_bare_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        crosslock.Lock(name)


def test_name_of_wrong_type() -> None:
    with pytest.raises(TypeError, match=r"str or os\.PathLike"):
        crosslock.Lock(42)
    with pytest.raises(TypeError, match="needs a lock name"):
        crosslock.Lock()


def test_unknown_backend_and_scheme() -> None:
    with pytest.raises(ValueError, match="'flok'"):
        crosslock.Lock("x", backend="flok")
    with pytest.raises(ValueError, match="'zookeeper'"):
        crosslock.Lock("x", backend="zookeeper://host")
    with pytest.raises(TypeError, match="backend"):
        crosslock.Lock("x", backend=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lease"):
        crosslock.Lock("x", lease=5)


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_server_backend_unreachable_is_unavailable(scheme: str) -> None:
    from .servers import free_port

    url = (
        f"{scheme}://127.0.0.1:{free_port()}/0"
        if scheme == "redis"
        else (f"postgresql://u@127.0.0.1:{free_port()}/db")
    )
    with pytest.raises(crosslock.BackendUnavailable, match="start the server"):
        crosslock.Lock("x", backend=url)


def test_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSLOCK_BACKEND", "multiprocessing")
    assert crosslock.Lock("env-x").backend == "multiprocessing"
    monkeypatch.setenv("CROSSLOCK_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        crosslock.Lock("env-y")


def test_shared_unsupported_backends_say_so() -> None:
    with pytest.raises(ValueError, match="cannot take shared"):
        crosslock.Lock("x", backend="multiprocessing", shared=True)
    with pytest.raises(ValueError, match="cannot take shared"):
        crosslock.Lock("x", backend="filelock", shared=True)
    with pytest.raises(TypeError, match="shared"):
        crosslock.Lock("x", shared="yes")  # type: ignore[arg-type]


# -- file races -------------------------------------------------------------------------------


def test_replaced_file_while_held_raises_lock_lost(tmp_path: Any) -> None:
    path = tmp_path / "x.lock"
    lock = crosslock.Lock(path)
    lock.acquire()
    os.unlink(path)
    assert not lock.held  # known lost at once
    with pytest.raises(crosslock.LockLost, match="removed or replaced"):
        lock.release()
    with pytest.raises(crosslock.NotHeldError):
        lock.release()
    with lock:  # usable again, on the new file at the path
        assert path.exists()
        assert lock.held


def test_waiter_converges_on_the_file_now_at_the_path(tmp_path: Any, procs: Procs) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    path, marker = str(tmp_path / "x.lock"), str(tmp_path / "inside")
    holder = crosslock.Lock(path)
    holder.acquire()
    # A waiter in another process opens the current file and blocks on it...
    opened, result = ctx.Event(), ctx.Queue()
    procs.start(ctx, workers.acquire_checking_marker, path, marker, opened, result)
    assert opened.wait(WAIT)
    # ...a third party replaces the file; another process locks the new one.
    os.unlink(path)
    acquired, release = ctx.Event(), ctx.Event()
    procs.start(ctx, workers.hold_with_marker, path, marker, acquired, release)
    assert acquired.wait(WAIT)
    with pytest.raises(crosslock.LockLost):
        holder.release()  # wakes the waiter on the old file: it must retry on the new one
    release.set()
    assert result.get(timeout=WAIT) == (True, False)  # acquired, and never overlapped
    assert procs.join_all() == [0, 0]


# -- shared locks -----------------------------------------------------------------------------


def test_shared_holders_coexist_and_exclude_writers(mp_context: Any, procs: Procs) -> None:
    reader = crosslock.Lock("rw", shared=True)
    writer = crosslock.Lock("rw")
    with reader:
        result = mp_context.Queue()
        procs.start(mp_context, workers.try_acquire, crosslock.Lock("rw", shared=True), result, 0)
        assert result.get(timeout=WAIT)[0] is True  # another reader gets in
        procs.start(mp_context, workers.try_acquire, crosslock.Lock("rw"), result, 0)
        assert result.get(timeout=WAIT)[0] is False  # a writer does not
        assert reader.token is not None
    with writer:
        procs.start(mp_context, workers.try_acquire, crosslock.Lock("rw", shared=True), result, 0)
        assert result.get(timeout=WAIT)[0] is False  # no reader during a write
    assert procs.join_all() == [0, 0, 0]


def test_shared_holds_of_threads_and_upgrade() -> None:
    reader = crosslock.Lock("rw2", shared=True)
    writer = crosslock.Lock("rw2")
    other_in = threading.Event()
    results: list[bool] = []
    with reader:

        def second_reader() -> None:
            results.append(reader.acquire(timeout=WAIT))
            other_in.set()
            reader.release()

        t = threading.Thread(target=second_reader)
        t.start()
        assert other_in.wait(WAIT)
        t.join(WAIT)
        with pytest.raises(crosslock.LockError, match="shared"):
            writer.acquire(timeout=0)
    assert results == [True]
    with writer:
        assert reader.acquire(timeout=0)  # an exclusive holder may re-enter shared
        reader.release()


def test_token_of_shared_holds_increases() -> None:
    reader = crosslock.Lock("rw3", shared=True)
    writer = crosslock.Lock("rw3")
    with writer:
        t1 = writer.token
    with reader:
        t2 = reader.token
    assert t1 is not None
    assert t2 is not None
    assert t2 > t1


# -- the default directory --------------------------------------------------------------------


def _fresh_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    monkeypatch.delenv("CROSSLOCK_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    _paths._checked.clear()
    return os.path.join(str(tmp_path), f"crosslock-{os.getuid()}")


def test_default_dir_is_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    expected = _fresh_default(monkeypatch, tmp_path)
    lock = crosslock.Lock("private")
    assert os.path.dirname(lock.name) == expected
    st = os.lstat(expected)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()


def test_default_dir_loose_permissions_are_fixed(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    expected = _fresh_default(monkeypatch, tmp_path)
    os.mkdir(expected)
    os.chmod(expected, 0o777)
    crosslock.Lock("loose")
    assert stat.S_IMODE(os.lstat(expected).st_mode) == 0o700


def test_default_dir_symlink_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    expected = _fresh_default(monkeypatch, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, expected)
    with pytest.raises(PermissionError, match="symlink"):
        crosslock.Lock("planted")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to create a folder owned by another user")
def test_default_dir_of_another_user_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    expected = _fresh_default(monkeypatch, tmp_path)
    os.mkdir(expected, 0o700)
    os.chown(expected, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        crosslock.Lock("theirs")


def test_runtime_dir_is_preferred(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("CROSSLOCK_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    _paths._checked.clear()
    assert os.path.dirname(crosslock.Lock("rt").name) == os.path.join(str(tmp_path), "crosslock")


def _make(path: str) -> str:
    crosslock.Lock(path).acquire(timeout=0)
    return "acquired"


@pytest.mark.skipif(os.getuid() != 0, reason="drops privileges from root")
def test_unwritable_folder_as_unprivileged_user(open_dir: Any) -> None:
    folder = open_dir / "ro"
    folder.mkdir(mode=0o755)
    kind, message = workers.in_child(_make, str(folder / "x.lock"), as_nobody=True)
    assert kind == "PermissionError"
    assert "no permission" in message
    assert str(folder) in message


@pytest.mark.skipif(os.getuid() != 0, reason="drops privileges from root")
def test_lock_file_of_another_user_still_locks(open_dir: Any) -> None:
    path = open_dir / "root.lock"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    assert workers.in_child(_make, str(path), as_nobody=True) == ("ok", "acquired")
    os.chmod(path, 0o600)
    kind, message = workers.in_child(_make, str(path), as_nobody=True)
    assert kind == "PermissionError"
    assert str(path) in message


@pytest.mark.parametrize("backend", ["file", "filelock"])
def test_lock_lost_on_both_file_backends(tmp_path: Any, backend: str) -> None:
    path = tmp_path / "x.lock"
    lock = crosslock.Lock(path, backend=backend)
    with lock:
        assert lock.token == 1
    lock.acquire()
    os.replace(tmp_path / "x.lock", tmp_path / "moved.lock")
    path.write_bytes(b"")
    assert not lock.held
    assert lock.token is None  # no token for a lost hold
    with pytest.raises(crosslock.LockLost):
        lock.release()
    with lock:
        assert lock.token == 1  # the new file starts its own count
        assert lock.held


def test_damaged_record_keeps_the_counter(tmp_path: Any) -> None:
    path = tmp_path / "x.lock"
    path.write_bytes(b'{"crosslock":1,"token":41,"pid":1,"host":"h\xff\xfe broken')
    lock = crosslock.Lock(path)
    with lock:
        assert lock.token == 42


def test_long_holder_details_never_break_the_record(tmp_path: Any) -> None:
    path = tmp_path / "x.lock"
    lock = crosslock.Lock(path)
    for expected in (1, 2):
        with lock:
            lock._publish(command="\U0001f600" * 500)
            assert lock.token == expected
    assert len(path.read_bytes()) == 512


def test_symlinked_lock_dir_is_one_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    monkeypatch.setenv("CROSSLOCK_DIR", str(tmp_path / "alias"))
    by_name = crosslock.Lock("one")
    by_path = crosslock.Lock(str(real / "one.lock"))
    with by_name:
        assert by_path.held


def test_print_ignores_the_default_backend(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("CROSSLOCK_BACKEND", "redis://localhost:1/0")
    crosslock.print("still", "printed")
    assert capsys.readouterr().out == "still printed\n"


def test_forked_child_leaving_open_block_keeps_parent_lock(tmp_path: Any) -> None:
    path = tmp_path / "data.txt"
    with crosslock.open(path, "w") as f:
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)  # the child has left the block (and exited)
            # Still exclusively ours: a writer elsewhere times out.
            with pytest.raises(crosslock.Timeout), crosslock.open(path, "a", timeout=0):
                pass  # pragma: no cover
            f.write("x")
    if pid == 0:
        os._exit(0)
    assert path.read_text() == "x"


def test_collected_lock_does_not_wait_for_the_watchers_lock(lock_dir: str) -> None:
    from crosslock._backends import _watch

    watcher = _watch.get()
    if watcher is None:
        pytest.skip("no inotify here")

    def make() -> crosslock.Lock:
        lock = crosslock.Lock("collected")
        with lock:
            pass
        return lock

    collect_lock_while_holding(make, watcher._guard)
