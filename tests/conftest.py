"""Shared fixtures: a private lock directory per test, backends, process helpers."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pathlib
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import crosslock

from .servers import PostgresServer, RedisServer

#: Every backend; the conformance suite runs on each (servers: see servers.py).
BACKENDS = ["file", "filelock", "multiprocessing", "redis", "postgres"]
#: The lease tests use for Redis: short, so that a dead holder frees it soon.
TEST_LEASE = 1.5
#: Start methods for multi-process tests.
START_METHODS = ["fork", "spawn"]

#: Generous bound for a handshake between processes (never a sleep).
WAIT = 30.0


@pytest.fixture(autouse=True)
def lock_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the default lock directory at a fresh folder for each test."""
    folder = tmp_path / "locks"
    folder.mkdir()
    monkeypatch.setenv("CROSSLOCK_DIR", str(folder))
    monkeypatch.delenv("CROSSLOCK_BACKEND", raising=False)
    return str(folder)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """A backend name, or a server URL for the server backends."""
    name: str = request.param
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    if name == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        return pg.url
    return name


@pytest.fixture
def make_lock(backend: str, request: pytest.FixtureRequest) -> Callable[..., crosslock.Lock]:
    """Build a Lock of the parametrized backend; names are unique per test.

    (Named multiprocessing locks live as long as the process, so a name
    must not be reused by a later test in the same worker.)
    """
    counter = [0]
    prefix = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)

    def make(name: str | None = None, **kwargs: Any) -> crosslock.Lock:
        if name is None:
            counter[0] += 1
            name = str(counter[0])
        if backend.startswith("redis"):
            kwargs.setdefault("lease", TEST_LEASE)
        return crosslock.Lock(f"{prefix}-{name}", backend=backend, **kwargs)

    return make


@pytest.fixture(params=START_METHODS)
def mp_context(request: pytest.FixtureRequest) -> Any:
    return multiprocessing.get_context(request.param)


class Procs:
    """Start processes and reap every one of them, killing stragglers."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def start(self, ctx: Any, target: Callable[..., Any], *args: Any) -> Any:
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc

    def join_all(self, timeout: float = WAIT) -> list[int | None]:
        codes = []
        for proc in self.procs:
            proc.join(timeout)
            codes.append(proc.exitcode)
        return codes

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    helper = Procs()
    try:
        yield helper
    finally:
        helper.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    # Fork from a threaded test process warns on Python 3.12+; our fork tests
    # fork on purpose and reap their children.
    config.addinivalue_line(
        "filterwarnings", "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
    )
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture
def open_dir() -> Iterator[pathlib.Path]:
    """A folder that user nobody can reach (pytest's tmp_path is private to root)."""
    folder = tempfile.mkdtemp(prefix="crosslock-test-")
    os.chmod(folder, 0o755)
    try:
        yield pathlib.Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def collect_lock_while_holding(make: Callable[[], crosslock.Lock], held: Any) -> None:
    """Build a Lock with ``make`` (which may use it), drop it, and run the cycle
    collector in a thread that holds the lock ``held`` meanwhile: the collector may
    strike at any allocation, also one made under a lock that closing a backend
    takes. Fails if the collection does not end within WAIT seconds (a deadlock)."""
    was_enabled = gc.isenabled()
    gc.disable()  # no collection but the one below, in the other thread
    try:
        cycle: list[Any] = [make()]
        cycle.append(cycle)  # only the cycle collector frees the Lock now
        del cycle
        done = threading.Event()

        def collect() -> None:
            with held:
                gc.collect()
            done.set()

        threading.Thread(target=collect, daemon=True).start()
        assert done.wait(WAIT), "collecting a Lock deadlocked: a finalizer waited for a lock its thread held"
    finally:
        if was_enabled:
            gc.enable()
