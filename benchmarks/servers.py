"""Throwaway Redis and PostgreSQL servers for the server measurements.

:func:`started` starts a ``redis-server`` (no persistence) and a PostgreSQL
cluster (``initdb``, then ``pg_ctl start``; as root both run as the user
``postgres``) on free loopback ports, each in a temporary folder, and stops
them and removes their folders when the block ends, however it ends (an
error, Ctrl-C, the suite's SIGTERM). A *guardian*, a small forked process
told about each server as it starts, stops them too should the suite die
without cleaning up (SIGKILL): it waits for the suite's end of a pipe to
close. Every wait here is bounded.

A server whose programs are not installed is reported as missing (its
subjects are skipped); one that is installed but does not start is an error.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Server", "Servers", "started"]

#: Bound on a server's start (and on each pg_ctl call).
START_TIMEOUT_S = 60.0
#: Where Debian keeps the PostgreSQL programs when they are not on PATH.
_PG_DIRS = "/usr/lib/postgresql/*/bin"
#: Attempts at a free port (another process may take the one we picked).
_PORT_TRIES = 3


@dataclass
class Server:
    """What the suite knows of one server."""

    kind: str  # "redis" or "postgres"
    #: "ok" (running), "missing" (not installed) or "error" (did not start)
    status: str = "missing"
    detail: str = ""
    url: str = ""
    version: str = ""
    port: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> dict[str, object]:
        return {"status": self.status, "detail": self.detail, "version": self.version, "port": self.port}


@dataclass
class Servers:
    redis: Server = field(default_factory=lambda: Server("redis"))
    postgres: Server = field(default_factory=lambda: Server("postgres"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None:
        for folder in sorted(glob.glob(_PG_DIRS), reverse=True):  # the newest version first
            found = shutil.which(tool, path=folder)
            if found:
                break
    return found


def _version(exe: str) -> str:
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return " / ".join(line.strip() for line in f.readlines()[-lines:] if line.strip())
    except OSError:
        return ""


# -- the guardian ---------------------------------------------------------------------


def _guard(read_fd: int) -> None:
    """The guardian's body: learn the servers from the pipe; past its end
    without a "done", stop them and remove their folders."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # outlive the suite's group, then clean up
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold no pipe of the suite's caller open
        os.dup2(devnull, fd)
    data = b""
    while chunk := os.read(read_fd, 4096):
        data += chunk
    commands = [line.split("\0") for line in data.decode().splitlines() if line]
    if ["done"] in commands:
        return
    # Servers first, folders last: kill, run (pg_ctl stop), then rmtree.
    order = {"kill": 0, "run": 1, "rmtree": 2}
    for command in sorted(commands, key=lambda c: order.get(c[0], 3)):
        with contextlib.suppress(Exception):
            if command[0] == "kill":  # kill PID NAME: only if PID still runs NAME
                with open(f"/proc/{command[1]}/cmdline", "rb") as f:
                    if command[2].encode() in f.read():
                        os.kill(int(command[1]), signal.SIGKILL)
            elif command[0] == "run":
                subprocess.run(command[1:], capture_output=True, timeout=START_TIMEOUT_S, check=False)
            elif command[0] == "rmtree":
                shutil.rmtree(command[1], ignore_errors=True)


class _Guardian:
    def __init__(self) -> None:
        read_fd, self._fd = os.pipe()  # both close-on-exec: no server inherits them
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the guardian
            status = 0
            try:
                os.close(self._fd)
                _guard(read_fd)
            except BaseException:
                status = 1
            os._exit(status)
        os.close(read_fd)

    def tell(self, *command: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, "\0".join(command).encode() + b"\n")

    def close(self) -> None:
        """The servers are stopped: let the guardian go, and reap it."""
        self.tell("done")
        with contextlib.suppress(OSError):
            os.close(self._fd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


# -- Redis ------------------------------------------------------------------------------


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Redis:
    def __init__(self, info: Server, guardian: _Guardian, exe: str) -> None:
        self.info = info
        self.folder = tempfile.mkdtemp(prefix="crosslock-bench-redis-")
        guardian.tell("rmtree", self.folder)
        self.proc: subprocess.Popen[bytes] | None = None
        log = os.path.join(self.folder, "redis.log")
        for _ in range(_PORT_TRIES):
            port = _free_port()
            self.proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.folder, "--logfile", log],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the suite, which stops the server
            )  # fmt: skip
            guardian.tell("kill", str(self.proc.pid), "redis-server")
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _pong(port):
                    info.port, info.url = port, f"redis://127.0.0.1:{port}/0"
                    info.status = "ok"
                    return
                time.sleep(0.02)
            self.stop()
        info.status, info.detail = "error", f"redis-server did not start: {_tail(log)}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- PostgreSQL -------------------------------------------------------------------------


class _Postgres:
    def __init__(self, info: Server, guardian: _Guardian, tools: dict[str, str]) -> None:
        self.info = info
        self.tools = tools
        self.user: str | None = None
        self.folder = tempfile.mkdtemp(prefix="crosslock-bench-pg-")
        guardian.tell("rmtree", self.folder)
        if os.getuid() == 0:  # the server refuses to run as root
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                info.status, info.detail = "missing", "no system user postgres (Debian package postgresql)"
                return
            self.user = "postgres"
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        os.chmod(self.folder, 0o755)
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "log")
        stop = self._command("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
        try:
            self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync")
            for attempt in range(_PORT_TRIES):
                port = _free_port()
                options = (
                    f"-p {port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off"
                )
                guardian.tell("run", *stop)  # told first: a start cut short is stopped too
                try:
                    self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log,
                              "-w", "-t", str(int(START_TIMEOUT_S)), "start")  # fmt: skip
                except subprocess.CalledProcessError:
                    if attempt == _PORT_TRIES - 1:
                        raise
                    continue
                info.port, info.url = port, f"postgresql://postgres@127.0.0.1:{port}/postgres"
                info.status = "ok"
                return
        except (OSError, subprocess.SubprocessError) as exc:
            output = getattr(exc, "stderr", b"") or b""
            info.status = "error"
            info.detail = (
                f"PostgreSQL did not start ({exc}): {output.decode(errors='replace').strip()[-300:]}"
            )
            info.detail += f" {_tail(self.log)}".rstrip()

    def _command(self, tool: str, *args: str) -> list[str]:
        cmd = [self.tools[tool], *args]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            self._command(tool, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT_S + 30,
            check=True,
        )

    def close(self) -> None:
        if os.path.exists(os.path.join(self.folder, "data", "postmaster.pid")):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


# -- both -------------------------------------------------------------------------------


@contextlib.contextmanager
def started(progress: Callable[[str], None]) -> Iterator[Servers]:
    """Start both servers (those that are installed) for the block; stop them after it."""
    servers = Servers()
    guardian = _Guardian()
    redis: _Redis | None = None
    postgres: _Postgres | None = None
    try:
        began = time.monotonic()
        exe = shutil.which("redis-server")
        if exe is None:
            servers.redis.detail = "not installed (Debian package redis-server)"
        else:
            servers.redis.version = _version(exe)
            redis = _Redis(servers.redis, guardian, exe)
        _progress(progress, servers.redis, began)
        began = time.monotonic()
        tools = {tool: _which(tool) for tool in ("initdb", "pg_ctl", "postgres")}
        absent = [tool for tool, path in tools.items() if path is None]
        if os.getuid() == 0 and shutil.which("runuser") is None:
            absent.append("runuser")
        if absent:
            servers.postgres.detail = f"{', '.join(absent)} not installed (Debian package postgresql)"
        else:
            found = {tool: path for tool, path in tools.items() if path}
            servers.postgres.version = _version(found["postgres"])
            postgres = _Postgres(servers.postgres, guardian, found)
        _progress(progress, servers.postgres, began)
        yield servers
    finally:
        if redis is not None:
            redis.close()
        if postgres is not None:
            postgres.close()
        guardian.close()


def _progress(progress: Callable[[str], None], server: Server, began: float) -> None:
    took = f"{time.monotonic() - began:.1f} s"
    if server.ok:
        progress(f"servers: {server.kind} on port {server.port} ({took})")
    else:
        progress(f"servers: {server.kind}: {server.status}: {server.detail}")
