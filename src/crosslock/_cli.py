"""The ``crosslock`` command: run a command under a lock, show lock status, demo."""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__, _record
from ._errors import LockError, LockLost
from ._lock import Lock, check_timeout
from ._paths import LOCK_SUFFIX, default_dir, lock_path
from ._registry import backend_spec

EX_TEMPFAIL = 75

__all__ = ["main"]


def _parser(remainder: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crosslock",
        description="Serialize processes with one lock, whatever the lock underneath.",
    )
    parser.add_argument("--version", action="version", version=f"crosslock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run a command while holding a lock",
        description="Run COMMAND while holding the lock NAME (a bare name in the default lock "
        "directory, or a path). Exits with the command's status, or 75 when the timeout passes.",
        usage="crosslock run [--timeout S] [--shared] [--backend B] NAME -- COMMAND [ARG...]",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up after S seconds (exit 75); default: wait forever",
    )
    run.add_argument("--shared", action="store_true", help="take a shared (read) lock")
    run.add_argument(
        "--backend",
        default=None,
        metavar="B",
        help="backend name or URL (default: file, or $CROSSLOCK_BACKEND)",
    )
    run.add_argument("name", metavar="NAME", help="lock name or lock file path")
    if remainder:  # no "--": the command is whatever follows NAME
        run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND", help="command and arguments")

    status = sub.add_parser(
        "status",
        help="show which locks are held, by whom and since when",
        description="Show the locks in the default lock directory (or the named ones): "
        "held or free, and the holder's pid, host and since when.",
    )
    status.add_argument("names", nargs="*", metavar="NAME", help="lock names or paths")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--backend",
        default=None,
        metavar="URL",
        help="a redis:// or postgresql:// server to ask (default: the lock files)",
    )

    verify = sub.add_parser(
        "verify",
        help="check that locks exclude on a folder's file system (NFS, SMB, container volumes)",
        description="Start N processes that each take one lock M times, detect any two holds "
        "that overlap and any lost update of a shared counter, and print a verdict. Exit 0 only "
        "if no overlap and no lost update was seen.",
    )
    verify.add_argument(
        "folder",
        nargs="?",
        default=None,
        metavar="DIR",
        help="folder to check (default: the default lock directory)",
    )
    verify.add_argument("--processes", type=int, default=4, metavar="N", help="processes (default 4)")
    verify.add_argument("--holds", type=int, default=200, metavar="M", help="holds per process (default 200)")
    verify.add_argument("--backend", default="file", metavar="B", help="backend to check (default: file)")

    sub.add_parser(
        "demo",
        help="three processes print without a lock (interleaved) and with one (serialized)",
        description="The seed experiment: three processes print start/end lines without a lock "
        "and with one, side by side.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    split = _command_start(argv)
    if split is not None:
        # "run [options] NAME [options] -- COMMAND...": options may follow NAME.
        argv, command = argv[:split], argv[split + 1 :]
    args = _parser(remainder=command is None).parse_args(argv)
    if command is not None:
        args.cmd = command
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        if args.command == "verify":
            from ._verify import verify

            verdict = verify(args.folder or default_dir(), args.processes, args.holds, args.backend)
            print(verdict.report())
            return 0 if verdict.ok else 1
        from ._demo import run_demo

        return run_demo()
    except (LockError, OSError, ValueError, TypeError) as exc:
        print(f"crosslock: error: {exc}", file=sys.stderr)
        return 1


# -- run ---------------------------------------------------------------------------

_RUN_VALUED = {"--timeout", "--backend"}
_RUN_FLAGS = {"--shared", "-h", "--help"}


def _command_start(argv: list[str]) -> int | None:
    """Index of the ``--`` that starts the command of ``run``, if NAME and only
    options come before it; ``None`` otherwise (the command then follows NAME)."""
    if argv[:1] != ["run"]:
        return None
    seen_name = False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i if seen_name else None
        if arg in _RUN_VALUED:
            i += 2
            continue
        if arg in _RUN_FLAGS or arg.split("=", 1)[0] in _RUN_VALUED:
            i += 1
            continue
        if arg.startswith("-") or seen_name:
            return None  # the command itself (or an unknown option argparse will report)
        seen_name = True
        i += 1
    return None


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "crosslock run: error: no command given; usage: crosslock run NAME -- COMMAND [ARG...]",
            file=sys.stderr,
        )
        return 2
    check_timeout(args.timeout)
    lock = Lock(args.name, backend=args.backend, timeout=args.timeout, shared=args.shared)
    if not lock.acquire():
        print(
            f"crosslock: timed out after {args.timeout:g} s waiting for lock {lock.name!r}", file=sys.stderr
        )
        return EX_TEMPFAIL
    procs: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if procs:
            procs[0].send_signal(signum)
        else:
            pending.append(signum)  # the command is not started yet: pass it on once it is

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        lock._publish(command=" ".join(cmd)[:120])
        try:
            procs.append(subprocess.Popen(cmd))
        except FileNotFoundError:
            print(f"crosslock: command not found: {cmd[0]}", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"crosslock: permission denied: {cmd[0]}", file=sys.stderr)
            return 126
        for signum in pending:
            procs[0].send_signal(signum)
        while True:
            try:
                code = procs[0].wait()
                break
            except KeyboardInterrupt:
                continue  # the command got the same Ctrl-C; wait for it to finish
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        try:
            lock.release()
        except LockLost as exc:
            print(f"crosslock: warning: {exc}", file=sys.stderr)
    return code if code >= 0 else 128 - code


#: Signals passed on to the command (Ctrl-C reaches it from the terminal).
_FORWARDED = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s]


# -- status ------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    spec = backend_spec(args.backend)
    if "://" in spec:
        from ._backends._server import redact

        return _print_status(_server_status(spec, list(args.names)), args.json, f"no locks at {redact(spec)}")
    if args.names:
        paths = [lock_path(n) for n in args.names]
    else:
        folder = default_dir()
        paths = sorted(glob.glob(os.path.join(glob.escape(folder), "*" + LOCK_SUFFIX)))
    rows = [_describe(p) for p in paths]
    return _print_status(rows, args.json, f"no locks in {default_dir()}")


def _server_status(spec: str, names: list[str]) -> list[dict[str, Any]]:
    import importlib

    from ._registry import target_class

    cls = target_class(spec)  # checks the scheme and the optional package
    module = importlib.import_module(cls.__module__)
    rows: list[dict[str, Any]] = module.status(spec, names)
    return rows


def _print_status(rows: list[dict[str, Any]], as_json: bool, empty: str) -> int:
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(empty)
        return 0
    header = ("NAME", "STATE", "PID", "HOST", "SINCE")
    table = [header] + [
        (r["name"], r["state"], ",".join(map(str, r["pids"])) or "-", r["host"] or "-", _since(r["since"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    return 0


def _describe(path: str) -> dict[str, Any]:
    from ._backends._native import native as os_mod

    folder = default_dir()
    name = path
    if os.path.dirname(path) == folder and path.endswith(LOCK_SUFFIX):
        name = os.path.basename(path)[: -len(LOCK_SUFFIX)]
    row: dict[str, Any] = {
        "name": name,
        "path": path,
        "state": "free",
        "pids": [],
        "host": None,
        "since": None,
        "token": None,
    }
    if not os.path.lexists(path):
        row["state"] = "missing"
        return row
    pids = os_mod.holder_pids(path)
    # The kernel's lock table, where it has one, answers without touching the
    # lock; otherwise (or for holders it cannot see, e.g. on NFS) probe it.
    state = _state_from_table(path) if pids else os_mod.probe(path)
    if state is None:
        return row
    row["state"] = "held" if state == "exclusive" else "held (shared)"
    rec = _record.peek(path)
    if pids:
        row["pids"] = pids
        if rec.get("pid") in pids:
            row.update(
                host=rec.get("host"),
                since=rec.get("since"),
                token=rec.get("token"),
                command=rec.get("command"),
            )
        else:
            row["host"] = _record.host()
    elif rec.get("pid") and _alive(rec["pid"]):  # no lock table: trust a live recorded holder
        row.update(pids=[rec["pid"]], host=rec.get("host"), since=rec.get("since"), token=rec.get("token"))
    return row


def _alive(pid: Any) -> bool:
    from ._backends._mp import _alive as alive

    return isinstance(pid, int) and alive(pid)


def _state_from_table(path: str) -> str:
    from ._backends._native import native

    return "exclusive" if native.holder_kinds(path) & {"WRITE"} else "shared"


def _since(since: Any) -> str:
    if not isinstance(since, (int, float)):
        return "-"
    when = datetime.datetime.fromtimestamp(since).astimezone()
    ago = max(0, int(time.time() - since))
    return f"{when:%Y-%m-%d %H:%M:%S} ({ago}s ago)"
