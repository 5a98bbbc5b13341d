"""Real Redis and PostgreSQL servers for the tests, on free loopback ports.

Each server lives in a temporary folder and stops by itself at the end of the
session (or test). A missing server binary skips the tests that need it
locally and fails them in CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    message = f"{what} is not installed"
    if IN_CI:
        pytest.fail(f"{message}, and CI must run these tests", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _drain(fd: int) -> None:
    """Read a server's log to its end, so that a full pipe never blocks it."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


class RedisServer:
    """A ``redis-server`` without persistence; can be killed and started again."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            missing("redis-server (Debian package redis-server)")
        self.exe = exe or ""
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="crosslock-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.folder, "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._await_output(b"Ready to accept connections")

    def _await_output(self, text: bytes, timeout: float = 20.0) -> None:
        """Read the server's log until ``text`` appears; then keep draining it."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        seen = b""
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start: {seen[-500:]!r}")
            seen += chunk
        self._drainer = threading.Thread(target=_drain, args=(fd,), daemon=True)
        self._drainer.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self._drainer is not None:
                self._drainer.join(10)  # it ends at the log's end; then the pipe may close
                self._drainer = None
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster (run as user postgres when we are root)."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(tool) is None:
                missing(f"PostgreSQL's {tool} (Debian package postgresql)")
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="crosslock-pg-")
        self.user: str | None = None
        if os.getuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                missing("the postgres system user (Debian package postgresql)")
            self.user = "postgres"
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        os.chmod(self.folder, 0o755)
        self.data = os.path.join(self.folder, "data")
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
