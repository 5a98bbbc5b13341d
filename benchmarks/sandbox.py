"""Forked children for measurements: a time limit each, and every process reaped.

The suite process forks one *measuring process* per measurement and subject
(:func:`run_in_child`); that process forks the *workers* a measurement needs
(:func:`run_workers`). The measuring process leads a process group of its own,
so a measurement over its time limit is killed with all its workers at once.
Every child dies with its parent (``PR_SET_PDEATHSIG``), and the suite process
is a child subreaper, so workers orphaned by a kill come back to it to be
reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

__all__ = ["CTX", "Outcome", "WorkerError", "become_subreaper", "reap_orphans", "run_in_child", "run_workers"]

T = TypeVar("T")

#: fork: locks made by the measuring process are inherited by its workers.
CTX = multiprocessing.get_context("fork")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LINUX = sys.platform.startswith("linux")


class WorkerError(RuntimeError):
    """A worker raised or died; the message carries its traceback or exit code."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a measuring process came back with."""

    status: str  # "ok", "timed out" or "error"
    value: T | None = None
    detail: str = ""


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> None:
    """Have orphaned descendants re-parented to this process (Linux), to reap them."""
    if _LINUX:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _die_with_parent(parent: int) -> None:
    if _LINUX:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def _child_main(body: Callable[[], object], conn: Connection, parent: int, leader: bool) -> None:
    _die_with_parent(parent)
    if leader:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    try:
        message: tuple[str, object] = ("ok", body())
    except BaseException:
        message = ("error", traceback.format_exc())
    try:
        conn.send(message)
    except Exception:  # e.g. a result that does not pickle
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _start(body: Callable[[], object], leader: bool) -> tuple[Any, Connection]:
    recv, send = CTX.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    proc = CTX.Process(target=_child_main, args=(body, send, os.getpid(), leader), daemon=False)
    proc.start()
    send.close()  # the child holds the only write end: its death reads as EOF
    return proc, recv


def run_in_child(body: Callable[[], T], time_limit: float) -> Outcome[T]:
    """Run ``body`` in a forked measuring process; kill it (and its workers)
    when it takes longer than ``time_limit`` seconds."""
    proc, recv = _start(body, leader=True)
    with contextlib.suppress(OSError):  # also set here: no race with a kill
        os.setpgid(proc.pid, proc.pid)
    answered = False
    try:
        if not recv.poll(time_limit):
            return Outcome("timed out", detail=f"killed after the time limit of {time_limit:g} s")
        try:
            status, payload = recv.recv()
        except EOFError:
            proc.join(5)
            return Outcome("error", detail=f"the measuring process died (exit code {proc.exitcode})")
        answered = True
        if status == "ok":
            return Outcome("ok", value=payload)
        return Outcome("error", detail=str(payload))
    finally:
        recv.close()
        _stop(proc, grace=5.0 if answered else 0.0)
        reap_orphans()


def _group_members(pgid: int) -> list[int]:
    """Pids of the processes in group ``pgid`` other than its leader (Linux)."""
    members = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == pgid:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def _stop(proc: Any, grace: float) -> None:
    """Join the measuring process; past ``grace`` seconds kill its whole group."""
    if grace:
        proc.join(grace)
    if proc.exitcode is not None:
        return
    members = _group_members(proc.pid)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    proc.join()
    # Its workers were re-parented to us (we are a subreaper): reap them.
    deadline = time.monotonic() + 5.0
    for pid in members:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)


def reap_orphans(wait: float = 0.0) -> None:
    """Reap descendants re-parented to this process (waiting up to ``wait`` s for them).

    Only call this while no ``multiprocessing`` child of this process runs.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def run_workers(bodies: Sequence[Callable[[], object]]) -> list[Any]:
    """Fork one worker per body and return their results in order.

    A worker that raises or dies fails the lot at once (:class:`WorkerError`);
    every worker is reaped, killed first if need be.
    """
    procs: list[Any] = []
    pending: dict[int, Connection] = {}
    results: dict[int, object] = {}
    try:
        for i, body in enumerate(bodies):
            proc, recv = _start(body, leader=False)
            procs.append(proc)
            pending[i] = recv
        while pending:
            ready = multiprocessing.connection.wait(list(pending.values()))
            for i, conn in list(pending.items()):
                if conn not in ready:
                    continue
                try:
                    status, payload = conn.recv()
                except EOFError:
                    procs[i].join(5)
                    raise WorkerError(f"worker {i} died (exit code {procs[i].exitcode})") from None
                if status != "ok":
                    raise WorkerError(f"worker {i} failed:\n{payload}")
                results[i] = payload
                del pending[i]
                conn.close()
        return [results[i] for i in range(len(bodies))]
    finally:
        for conn in pending.values():
            conn.close()
        for proc in procs:
            proc.join(5 if not pending else 0)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
