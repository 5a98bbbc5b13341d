"""Module-level worker functions for multi-process tests (importable by spawn children)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import crosslock


def hold_until(lock: crosslock.Lock, acquired: Any, release: Any, result: Any = None) -> None:
    """Acquire, signal ``acquired``, wait for ``release``, release."""
    assert lock.acquire(timeout=30)
    token = lock.token
    acquired.set()
    release.wait(30)
    if result is not None:
        result.put(token)
    lock.release()


def hold_forever(lock: crosslock.Lock, acquired: Any) -> None:
    """Acquire, signal, then block until killed."""
    assert lock.acquire(timeout=30)
    acquired.set()
    while True:
        time.sleep(3600)


def try_acquire(lock: crosslock.Lock, result: Any, timeout: float | None = 0) -> None:
    """Report whether the lock could be acquired, what ``held`` said before, and release."""
    held_before = lock.held
    try:
        got = lock.acquire(timeout=timeout) if timeout is not None else lock.acquire()
    except crosslock.LockError as exc:
        result.put(("error", type(exc).__name__, str(exc)))
        return
    token = lock.token if got else None
    if got:
        lock.release()
    result.put((got, held_before, token))


def try_release(lock: crosslock.Lock, result: Any) -> None:
    """Report what happens when this process releases a lock it was handed."""
    try:
        lock.release()
    except crosslock.NotHeldError:
        result.put("NotHeldError")
        return
    result.put("released")


def bump_counter(path: str) -> None:
    """Add 1 to the decimal counter in the file at ``path`` (read, then rewrite)."""
    with open(path, "r+") as f:
        value = int(f.read() or "0")
        f.seek(0)
        f.write(str(value + 1))
        f.truncate()


def count_under_lock(lock: crosslock.Lock, counter_path: str, marker: str, holds: int, start: Any) -> None:
    """Increment a file counter ``holds`` times under the lock; fail on overlap."""
    start.wait(30)
    for _ in range(holds):
        with lock:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # overlap -> FileExistsError
            os.close(fd)
            bump_counter(counter_path)
            os.unlink(marker)


def append_line(path: str, line: str) -> None:
    """Append one line with a single write (synchronous, unlike a Queue's feeder thread)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def experiment(lock: crosslock.Lock | None, worker: int, out_path: str, barrier: Any) -> None:
    """The classic experiment: a start line, a short pause, an end line."""
    barrier.wait(30)
    if lock is not None:
        lock.acquire()
    try:
        append_line(out_path, f"worker {worker} start")
        time.sleep(0.05)  # the "work": widens the window that a missing lock would show
        append_line(out_path, f"worker {worker} end")
    finally:
        if lock is not None:
            lock.release()


def print_long_lines_to(target: str, how: str, tag: str, lines: int, width: int, barrier: Any) -> None:
    """Print ``lines`` lines of ``tag * width`` to ``target``, one crosslock.print call each.

    ``how="file"``: open ``target`` in append mode and pass it as ``file=``.
    ``how="stdout"``: point fd 1 and ``sys.stdout`` at ``target`` and print with
    ``file=None``. The target is opened before the barrier, the printing starts
    after it.
    """
    saved = sys.stdout
    if how == "file":
        stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    else:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.close(fd)
        stream = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - closed below
        sys.stdout = stream
    try:
        barrier.wait(30)
        line = tag * width
        for _ in range(lines):
            if how == "file":
                crosslock.print(line, file=stream)
            else:
                crosslock.print(line)
        stream.flush()
    finally:
        sys.stdout = saved
        stream.close()


def hold_open(path: str, mode: str, acquired: Any, release: Any) -> None:
    """Hold ``crosslock.open(path, mode)``, signal ``acquired``, wait for ``release``."""
    with crosslock.open(path, mode, timeout=30):
        acquired.set()
        release.wait(30)


def hold_with_marker(path: str, marker: str, acquired: Any, release: Any) -> None:
    """Hold the lock at ``path`` with an occupancy marker present."""
    lock = crosslock.Lock(path)
    assert lock.acquire(timeout=30)
    with open(marker, "x"):
        pass
    acquired.set()
    release.wait(30)
    os.unlink(marker)
    lock.release()


def acquire_checking_marker(path: str, marker: str, opened: Any, result: Any) -> None:
    """Open the lock file, say so, block until acquired; report whether anyone overlapped."""
    lock = crosslock.Lock(path)  # opens the file now
    opened.set()
    got = lock.acquire()
    overlap = os.path.exists(marker)
    lock.release()
    result.put((got, overlap))


def pool_init(lock: crosslock.Lock) -> None:
    global _pool_lock
    _pool_lock = lock


_pool_lock: crosslock.Lock | None = None


def pool_task(x: int) -> int:
    assert _pool_lock is not None
    with _pool_lock:
        return x * 2


def use_lock(lock: crosslock.Lock) -> int:
    with lock:
        return 1


def stress_worker(
    lock: crosslock.Lock, counter: str, marker: str, threads: int, holds: int, start: Any, result: Any
) -> None:
    """``threads`` threads of this process each take ``lock`` ``holds`` times with an
    occupancy marker (exclusive create on entry) and a shared counter."""
    import threading

    overlaps = [0]
    errors: list[str] = []
    start.wait(60)

    def run() -> None:
        try:
            for _ in range(holds):
                with lock:
                    try:
                        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        overlaps[0] += 1
                        continue
                    os.close(fd)
                    bump_counter(counter)
                    os.unlink(marker)
        except Exception as exc:  # reported: a thread that died would look like lost updates
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    result.put((overlaps[0], errors))


# -- fault-injection workers (tests/test_faults_*.py, tests/test_interop.py) ----------------------


def _line_io(conn: Any) -> tuple[Any, Any]:
    """(say, hear) over a multiprocessing Connection, or over stdout/stdin when ``conn`` is None."""
    if conn is not None:
        return conn.send, conn.recv

    def say(line: str) -> None:
        # One unbuffered write: safe from a signal handler, and an exception raised
        # by a handler right after it cannot leave half-flushed buffers behind.
        os.write(1, (line + "\n").encode())

    def hear() -> str:
        return sys.stdin.readline().strip()

    return say, hear


def interrupted_waiter(locks: list[crosslock.Lock], timeout: float | None, conn: Any = None) -> None:
    """Wait for each of ``locks`` (held elsewhere) until Ctrl-C; then acquire and release each.

    For each lock: hears a line, says ``waiting``, then waits until SIGINT
    raises KeyboardInterrupt and says ``interrupted held=...`` (or
    ``returned ...`` if the wait ended otherwise, and stops). SIGINT raises
    only once per wait (a repeated signal is ignored), so the test may send
    it again when the first one landed just before the blocking call began
    (CPython runs the handler only once that call returns). Then, on a line,
    for each lock: acquires with a bound, says ``acquired=... held=...``,
    releases; says ``released held=...`` and waits for a last line.
    """
    import signal

    armed = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    say, hear = _line_io(conn)
    for lock in locks:
        hear()
        say("waiting")
        try:
            armed[0] = True  # a signal from here on, even just before the wait, interrupts
            got = lock.acquire() if timeout is None else lock.acquire(timeout=timeout)
        except KeyboardInterrupt:
            say(f"interrupted held={lock.held}")
        else:
            armed[0] = False
            say(f"returned {got} held={lock.held}")
            if got:
                lock.release()
            return
    hear()
    for lock in locks:
        got = lock.acquire(timeout=30)
        say(f"acquired={got} held={lock.held}")
        if got:
            lock.release()
    say(f"released held={any(lock.held for lock in locks)}")
    hear()


def timed_out_waiter(lock: crosslock.Lock, timeout: float, attempts: int, conn: Any) -> None:
    """Try ``attempts`` times with ``timeout``; report; stay alive until told, then report ``held``."""
    say, hear = _line_io(conn)
    results = [lock.acquire(timeout=timeout) for _ in range(attempts)]
    say(f"results={results} held={lock.held}")
    hear()
    say(f"held={lock.held}")
    hear()


def deadline_waiter(lock: crosslock.Lock, sigurg: str, conn: Any) -> None:
    """Timed waits in the main thread while the program leaves SIGURG alone
    (``sigurg="default"``), handles it (``"handled"``) or blocks it (``"blocked"``).

    Says ``timeouts=... held=...`` after 400 short timed waits, then
    ``waiting`` and, once a wait with a long timeout returns, what it got and
    which crosslock threads run, whether the program's own handler or mask is
    still in place, and how often the program's handler ran.
    """
    import signal
    import threading

    say, hear = _line_io(conn)
    calls: list[int] = []

    def program_handler(signum: int, frame: Any) -> None:
        calls.append(signum)

    if sigurg == "handled":
        signal.signal(signal.SIGURG, program_handler)
    elif sigurg == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGURG])
    results = {lock.acquire(timeout=t) for t in (0.000002, 0.00001, 0.00003, 0.001) * 100}
    say(f"timeouts={sorted(results)} held={lock.held}")
    say("waiting")
    got = lock.acquire(timeout=60)
    threads = sorted({t.name for t in threading.enumerate() if t.name.startswith("crosslock")})
    kept = (
        signal.getsignal(signal.SIGURG) is program_handler
        if sigurg == "handled"
        else signal.SIGURG in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    )
    say(f"got={got} held={lock.held} threads={threads} kept={kept} calls={len(calls)}")
    if got:
        lock.release()
    hear()


def hold_and_exit(lock: crosslock.Lock, acquired: Any, how: str) -> None:
    """Acquire, signal, and end the process without releasing (``sys.exit`` or a plain return)."""
    assert lock.acquire(timeout=30)
    acquired.set()
    if how == "sys.exit":
        sys.exit(3)


def hold_then_exec(lock: crosslock.Lock, fd: int) -> None:
    """Acquire, write ``held`` to ``fd``, then exec a program that writes ``execd`` and sleeps."""
    assert lock.acquire(timeout=30)
    os.write(fd, b"held\n")
    os.set_inheritable(fd, True)
    code = f"import os, time; os.write({fd}, b'execd\\n'); time.sleep(60)"
    os.execv(sys.executable, [sys.executable, "-c", code])


def hold_and_popen(lock: crosslock.Lock, conn: Any, end: str) -> None:
    """Acquire, start a long-running subprocess (close_fds=False), report its pid, then
    release (``end="release"``) or keep holding until killed (``end="killed"``)."""
    import subprocess

    assert lock.acquire(timeout=30)
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        close_fds=False,
        stdin=subprocess.DEVNULL,
    )
    conn.send(child.pid)
    if end == "release":
        lock.release()
        conn.send(f"released held={lock.held}")
    else:
        conn.send("holding")
    conn.recv()  # until told to go (or killed)


def forked_waiter(lock: crosslock.Lock, conn: Any) -> None:
    """In a child forked while a parent thread waits: report, then acquire once told."""
    held = lock.held
    got = lock.acquire(timeout=0)
    if got:
        lock.release()
    conn.send(f"held={held} try={got}")
    conn.recv()
    got = lock.acquire(timeout=30)
    conn.send(f"acquired={got} held={lock.held}")
    if got:
        lock.release()
    conn.send(f"released held={lock.held}")


def converging_waiter(path: str, backend: str, marker: str, holds: int, opened: Any, result: Any) -> None:
    """Open the lock file, say so, then take ``holds`` holds with an O_EXCL occupancy marker.

    Reports (holds taken, overlaps seen, LockLost count).
    """
    lock = crosslock.Lock(path, backend=backend)  # opens the current file now
    opened.set()
    got = overlaps = lost = 0
    for _ in range(holds):
        if not lock.acquire(timeout=30):
            continue
        got += 1
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.unlink(marker)
        try:
            lock.release()
        except crosslock.LockLost:
            lost += 1
    result.put((got, overlaps, lost))


def signalled_waiter(lock: crosslock.Lock, timeout: float | None, conn: Any = None) -> None:
    """Wait for a held lock while SIGUSR1 (a handler that returns) arrives: the wait must go on.

    Says ``waiting``, ``usr1`` from the handler each time, then ``got=... held=...``.
    """
    import signal

    say, hear = _line_io(conn)

    def on_usr1(signum: int, frame: Any) -> None:
        say("usr1")

    signal.signal(signal.SIGUSR1, on_usr1)
    say("waiting")
    got = lock.acquire() if timeout is None else lock.acquire(timeout=timeout)
    say(f"got={got} held={lock.held}")
    if got:
        lock.release()
    hear()


# -- server backends (tests/test_servers.py) ------------------------------------------------------


def server_client(url: str, name: str, options: dict[str, Any], conn: Any) -> None:
    """A process using the server lock ``name`` at ``url``, driven over the pipe ``conn``.

    Builds ``Lock(name, backend=url, **options)`` and says ``("ready",)`` (or
    ``("error", class name, message)`` and ends). Then answers commands until
    ``("exit",)`` or the pipe closes:

    - ``("acquire", timeout)``: says ``("trying",)`` first, then
      ``("acquired", got, token, held)``; ``timeout`` None waits without one.
    - ``("release",)``: ``("released", held)``.
    - ``("held",)``, ``("token",)``, ``("locked",)``: ``(command, value)``.
    - ``("write", path, data)``: a write to ``tests.fencing.FencedStore(path)``
      with the token of this process's last grant (kept, as a client would):
      ``("written",)`` or ``("stale", message)``.

    A crosslock error in any command is reported as ``("error", class name, message)``.
    """
    import faulthandler
    import signal

    from .fencing import FencedStore, StaleToken

    # A test that waits for this process in vain sends SIGUSR1: the stacks of
    # its threads go to stderr, which pytest shows with the failure.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        lock = crosslock.Lock(name, backend=url, **options)
    except crosslock.LockError as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    conn.send(("ready",))
    granted_token: int | None = None
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        what = command[0]
        try:
            if what == "exit":
                return
            if what == "acquire":
                conn.send(("trying",))
                timeout = command[1]
                got = lock.acquire() if timeout is None else lock.acquire(timeout=timeout)
                if got:
                    granted_token = lock.token
                conn.send(("acquired", got, granted_token if got else None, lock.held))
            elif what == "release":
                lock.release()
                conn.send(("released", lock.held))
            elif what == "held":
                conn.send(("held", lock.held))
            elif what == "token":
                conn.send(("token", lock.token))
            elif what == "locked":
                conn.send(("locked", lock.locked()))
            elif what == "write":
                assert granted_token is not None, "write before any grant"
                try:
                    FencedStore(command[1]).write(granted_token, command[2])
                except StaleToken as exc:
                    conn.send(("stale", str(exc)))
                else:
                    conn.send(("written",))
            else:
                conn.send(("error", "unknown command", repr(command)))
        except crosslock.LockError as exc:
            conn.send(("error", type(exc).__name__, str(exc)))


def in_child(target: Callable[..., Any], *args: Any, as_nobody: bool = False) -> Any:
    """Run ``target(*args)`` in a forked child (as user nobody if asked); return
    ``("ok", result)`` or ``(exception name, message)``. A child that hangs fails the test."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    result = fork.Queue()

    def child() -> None:
        if as_nobody:
            os.setgid(65534)
            os.setuid(65534)
        try:
            result.put(("ok", target(*args)))
        except BaseException as exc:
            result.put((type(exc).__name__, str(exc)))

    proc = fork.Process(target=child, daemon=True)
    proc.start()
    try:
        proc.join(30)
        assert not proc.is_alive(), "the child hangs"
        return result.get(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
