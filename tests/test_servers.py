"""The Redis and PostgreSQL backends against real servers: dead, stopped and fenced holders,
server restarts and outages, bad URLs and options, shared locks, waking waiters, tokens,
and the command line.

Processes are driven over pipes (``workers.server_client``); every wait is bounded and
every process is reaped. Tests that kill, restart or freeze a server get a server of
their own (``own_server``); the session servers are never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import WAIT, Procs, collect_lock_while_holding
from .fencing import FencedStore, StaleToken
from .servers import PostgresServer, RedisServer, free_port

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")

#: A short Redis lease, for the tests where a lease must run out.
LEASE = 1.0
#: Bound for one operation against a frozen server (Redis gives up on a silent socket
#: after about 5 s); an operation still running after it is a hang.
FROZEN_BOUND = 12.0
#: Bound for one command line run.
CLI_TIMEOUT = 30.0

Server = RedisServer | PostgresServer


# -- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(params=["redis", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest) -> str:
    """The session server's URL for ``kind``."""
    server: Server = request.getfixturevalue("redis_server" if kind == "redis" else "postgres_server")
    return server.url


@pytest.fixture
def own_server(kind: str) -> Iterator[Server]:
    """A server of this test's own, which it may stop, restart or freeze; closed after it."""
    server: Server = RedisServer() if kind == "redis" else PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A lock name no other test (or earlier run against the same server) uses."""
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name) + "-" + uuid.uuid4().hex[:8]


def lease_option(kind: str, lease: float = LEASE) -> dict[str, Any]:
    return {"lease": lease} if kind == "redis" else {}


class Client:
    """A process using one server lock, driven over a pipe (see ``workers.server_client``)."""

    def __init__(self, procs: Procs, url: str, name: str, ctx: Any = FORK, **options: Any) -> None:
        here, there = ctx.Pipe()
        self.proc: Any = procs.start(ctx, workers.server_client, url, name, options, there)
        there.close()
        self.conn: Any = here
        reply = self.recv()
        assert reply == ("ready",), f"the client could not build its lock: {reply}"

    @property
    def pid(self) -> int:
        pid: int = self.proc.pid
        return pid

    def recv(self, timeout: float = WAIT) -> Any:
        if not self.conn.poll(timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGUSR1)  # its stacks, on stderr (see workers.server_client)
            raise AssertionError("the client process did not answer in time")
        return self.conn.recv()

    def ask(self, *command: Any, timeout: float = WAIT) -> Any:
        self.conn.send(command)
        return self.recv(timeout)

    def start_acquire(self, timeout: float | None) -> None:
        """Start ``acquire`` in the client; returns once it is about to call it."""
        self.conn.send(("acquire", timeout))
        assert self.recv() == ("trying",)

    def acquire(self, timeout: float | None) -> tuple[str, bool, int | None, bool]:
        """``("acquired", got, token, held)``."""
        self.start_acquire(timeout)
        reply: tuple[str, bool, int | None, bool] = self.recv()
        assert reply[0] == "acquired", reply
        return reply

    def exit(self) -> None:
        self.conn.send(("exit",))
        self.proc.join(WAIT)
        assert self.proc.exitcode == 0


def granted_token(reply: tuple[str, bool, int | None, bool], above: int | None = None) -> int:
    """The token of a client's successful ``acquire`` reply (held, and larger than ``above``)."""
    what, got, token, held = reply
    assert what == "acquired"
    assert got
    assert held
    assert token is not None
    if above is not None:
        assert token > above
    return token


def stop_process(pid: int) -> None:
    """SIGSTOP a child of ours and wait until it is stopped."""
    os.kill(pid, signal.SIGSTOP)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the process should be stopped, not gone"


def await_lost_hold(lock: crosslock.Lock) -> None:
    """Wait until ``lock.held`` turns False.

    The ONLY polling wait in this file: a Redis hold is found lost by crosslock's
    background lease renewal (or by the lease's end), which signals nothing a test could
    wait on. Bounded (WAIT seconds) with 0.05 s ticks.
    """
    tick = threading.Event()
    deadline = time.monotonic() + WAIT
    while lock.held:
        assert time.monotonic() < deadline, "the lost hold was never noticed: held stayed True"
        tick.wait(0.05)


def server_pids(server: Server) -> list[int]:
    """The server's processes: redis-server, or the postmaster and its children."""
    if isinstance(server, RedisServer):
        assert server.proc is not None
        return [server.proc.pid]
    with open(os.path.join(server.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(server: Server) -> Iterator[None]:
    """The server's processes stopped (alive, listening, answering nothing); resumed on exit."""
    pids = server_pids(server)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# -- the fencing store on its own --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "file"])
def test_fenced_store_rejects_smaller_tokens(where: str, tmp_path: Path) -> None:
    store = FencedStore(None if where == "memory" else tmp_path / "store.json")
    assert store.read() is None
    assert store.highest is None
    store.write(5, "five")
    store.write(5, "five again")  # one hold may write many times
    assert store.read() == "five again"
    store.write(7, "seven")  # tokens need not be consecutive
    with pytest.raises(StaleToken, match="stale fencing token 6") as caught:
        store.write(6, "late")
    assert (caught.value.token, caught.value.highest) == (6, 7)
    with pytest.raises(StaleToken):
        store.write(5, "later still")
    assert store.read() == "seven"
    assert store.highest == 7
    with pytest.raises(TypeError):
        store.write(True, "a bool is no token")


def test_fenced_store_file_is_shared_between_instances(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    first, second = FencedStore(path), FencedStore(str(path))
    first.write(3, "from the first")
    assert second.read() == "from the first"
    second.write(4, "from the second")
    with pytest.raises(StaleToken):
        first.write(3, "late")
    assert first.read() == "from the second"
    assert FencedStore(path).highest == 4


# -- dead and stopped holders -------------------------------------------------------------------------


def test_killed_holder_frees_the_lock(kind: str, url: str, name: str, procs: Procs) -> None:
    """Redis: when the dead holder's lease runs out. PostgreSQL: when its connection closes."""
    options = lease_option(kind)
    holder = Client(procs, url, name, **options)
    _, got, token, held = holder.acquire(WAIT)
    assert got
    assert held
    assert token is not None
    waiter = Client(procs, url, name, **options)
    assert waiter.acquire(0.1)[1] is False  # excluded while the holder lives
    waiter.start_acquire(WAIT)  # waiting (or about to) when the holder dies
    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.join(WAIT)
    assert holder.proc.exitcode == -signal.SIGKILL
    _, got, new_token, held = waiter.recv()
    assert got is True, "nobody waits forever on a dead holder"
    assert held is True
    assert new_token is not None
    assert new_token > token
    assert crosslock.Lock(name, backend=url, **options).locked()  # the waiter holds it now
    assert waiter.ask("release") == ("released", False)
    waiter.exit()


def test_redis_holder_stopped_past_its_lease_is_fenced_off(
    redis_server: RedisServer, name: str, procs: Procs, tmp_path: Path
) -> None:
    url, store_path = redis_server.url, str(tmp_path / "store.json")
    holder = Client(procs, url, name, lease=LEASE)
    _, got, old_token, _ = holder.acquire(WAIT)
    assert got
    assert old_token is not None
    assert holder.ask("write", store_path, "first holder") == ("written",)
    lock = crosslock.Lock(name, backend=url, lease=LEASE)
    stop_process(holder.pid)
    try:
        # The stopped holder cannot renew its lease: once it runs out, another process
        # (this one) gets the lock, with a larger token, and writes with it.
        assert lock.acquire(timeout=WAIT)
        token = lock.token
        assert token is not None
        assert token > old_token
        store = FencedStore(store_path)
        store.write(token, "second holder")
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    # The resumed holder writes late, with the token of its lost hold: rejected.
    reply = holder.ask("write", store_path, "first holder, late")
    assert reply[0] == "stale", reply
    assert store.read() == "second holder"
    assert holder.ask("held") == ("held", False)
    assert holder.ask("token") == ("token", None)
    reply = holder.ask("release")
    assert reply[:2] == ("error", "LockLost"), reply
    assert repr(name) in reply[2]
    assert holder.ask("held") == ("held", False)
    # Its failed release did not touch the new holder's hold.
    assert lock.held
    assert lock.locked()
    assert lock.token == token
    assert holder.acquire(0.1)[1] is False
    lock.release()
    assert not lock.held
    assert lock.token is None
    _, got, newest, _ = holder.acquire(WAIT)
    assert got
    assert newest is not None
    assert newest > token
    assert holder.ask("release") == ("released", False)
    holder.exit()


def test_postgres_holder_stopped_keeps_its_lock(
    postgres_server: PostgresServer, name: str, procs: Procs
) -> None:
    """A stopped holder's session stays: others time out until it resumes and releases."""
    url = postgres_server.url
    holder = Client(procs, url, name)
    _, got, token, _ = holder.acquire(WAIT)
    assert got
    assert token is not None
    other = Client(procs, url, name)
    stop_process(holder.pid)
    try:
        _, got, _, held = other.acquire(0.2)
        assert got is False
        assert held is False
        assert other.ask("locked") == ("locked", True)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert holder.ask("held") == ("held", True)
    assert holder.ask("token") == ("token", token)
    other.start_acquire(WAIT)
    assert holder.ask("release") == ("released", False)
    granted_token(other.recv(), above=token)
    assert other.ask("release") == ("released", False)
    holder.exit()
    other.exit()


# -- server restarts and outages -----------------------------------------------------------------------


def test_server_restart_mid_hold(kind: str, own_server: Server, name: str, procs: Procs) -> None:
    """The holder learns LockLost; a waiter returns or raises a LockError; nobody hangs;
    afterwards the lock works again."""
    url, options = own_server.url, lease_option(kind)
    lock = crosslock.Lock(name, backend=url, **options)
    assert lock.acquire(timeout=WAIT)
    waiter = Client(procs, url, name, **options)
    waiter.start_acquire(WAIT)  # waiting (or about to) when the server goes away
    own_server.stop()
    reply = waiter.recv()  # a server that is down grants nothing, and hangs nobody
    assert reply[:2] in (("acquired", False), ("error", "BackendUnavailable")), reply
    if reply[0] == "error":
        assert re.search(r"start the server|check that the server runs", reply[2]), reply[2]
    assert waiter.ask("held") == ("held", False)
    own_server.start()  # same port, no data: Redis lost the key, PostgreSQL the session
    if kind == "redis":
        await_lost_hold(lock)  # the renewal finds the key gone (or the lease runs out)
    with pytest.raises(crosslock.LockLost, match=re.escape(repr(name))):
        lock.release()
    assert not lock.held
    assert lock.token is None
    with pytest.raises(crosslock.NotHeldError):
        lock.release()  # not left half-held
    fresh = crosslock.Lock(name, backend=url, **options)
    assert fresh.acquire(timeout=WAIT)
    assert fresh.held
    assert fresh.token is not None
    assert waiter.acquire(0.1)[1] is False
    fresh.release()
    _, got, _, held = waiter.acquire(WAIT)
    assert got
    assert held
    assert waiter.ask("release") == ("released", False)
    waiter.exit()


def test_token_grows_across_a_server_restart(kind: str, own_server: Server, name: str, procs: Procs) -> None:
    """A token is larger than any earlier hold's, also after the server restarted."""
    url, options = own_server.url, lease_option(kind)
    lock = crosslock.Lock(name, backend=url, **options)
    for _ in range(3):
        assert lock.acquire(timeout=WAIT)
        lock.release()
    assert lock.acquire(timeout=WAIT)
    before = lock.token
    assert before is not None
    lock.release()
    own_server.stop()
    own_server.start()
    client = Client(procs, url, name, **options)  # a client with a new connection
    _, got, after, _ = client.acquire(WAIT)
    assert got
    assert client.ask("release") == ("released", False)
    client.exit()
    assert after is not None
    assert after > before, (
        f"token {after} after the server restarted is not larger than {before} before: "
        "a resource that checks fencing tokens would reject every new holder"
    )


def test_idle_lock_works_after_server_restart(kind: str, own_server: Server, name: str) -> None:
    """A Lock that held nothing while the server restarted just works again: there was no
    hold to lose, so its first acquire must not fail on the connection the restart broke."""
    url, options = own_server.url, lease_option(kind)
    lock = crosslock.Lock(name, backend=url, **options)
    assert lock.acquire(timeout=WAIT)
    lock.release()
    own_server.stop()
    own_server.start()
    assert lock.acquire(timeout=WAIT)
    assert lock.held
    assert lock.token is not None
    lock.release()
    assert not lock.locked()


@pytest.mark.timeout(40)
def test_release_while_server_is_down(kind: str, own_server: Server, name: str) -> None:
    """A clear LockError naming the lock, no hang, and the Lock not left half-held."""
    url = own_server.url
    lock = crosslock.Lock(name, backend=url)  # Redis: the default lease, still running
    assert lock.acquire(timeout=WAIT)
    own_server.stop()
    with pytest.raises((crosslock.BackendUnavailable, crosslock.LockLost)) as caught:
        lock.release()
    assert repr(name) in str(caught.value)
    assert not lock.held
    assert lock.token is None
    with pytest.raises(crosslock.NotHeldError):
        lock.release()
    own_server.start()
    assert lock.acquire(timeout=WAIT)  # the restarted server has no trace of the old hold
    assert lock.held
    lock.release()
    assert not lock.locked()


@pytest.mark.timeout(60)
def test_frozen_server_never_hangs(kind: str, own_server: Server, name: str, procs: Procs) -> None:
    """A server that stops answering (paused, or a network black hole) hangs nobody: an
    acquire with a timeout and a release each return or raise a LockError."""
    url, options = own_server.url, lease_option(kind, 30.0)
    holder = Client(procs, url, name + "-held", **options)
    assert holder.acquire(WAIT)[1]
    waiter = Client(procs, url, name, **options)  # connected before the freeze
    with frozen(own_server):
        waiter.conn.send(("acquire", 0.5))
        holder.conn.send(("release",))
        assert waiter.recv() == ("trying",)
        deadline = time.monotonic() + FROZEN_BOUND
        got_waiter = waiter.conn.poll(max(0.0, deadline - time.monotonic()))
        got_holder = holder.conn.poll(max(0.0, deadline - time.monotonic()))
    assert (got_waiter, got_holder) == (True, True), (
        f"on a frozen {kind} server, after {FROZEN_BOUND:g} s: "
        f"acquire(timeout=0.5) {'returned' if got_waiter else 'hung'}, "
        f"release() {'returned' if got_holder else 'hung'}"
    )
    reply = waiter.conn.recv()
    assert reply[:2] in (("acquired", False), ("error", "BackendUnavailable")), reply
    reply = holder.conn.recv()
    assert reply[:2] in (("error", "BackendUnavailable"), ("error", "LockLost")), reply
    assert repr(name + "-held") in reply[2]
    assert holder.ask("held") == ("held", False)


# -- bad URLs, credentials and options -----------------------------------------------------------------


def _bad_url(case: str, redis_port: int, pg_port: int) -> str:
    port = free_port()  # nothing listens there
    return {
        "redis-refused": f"redis://127.0.0.1:{port}/0",
        "redis-bad-port": "redis://127.0.0.1:notaport/0",
        "redis-no-such-db": f"redis://127.0.0.1:{redis_port}/999",
        "redis-no-such-user": f"redis://nosuchuser:s3cretpw@127.0.0.1:{redis_port}/0",
        "postgres-refused": f"postgresql://postgres@127.0.0.1:{port}/postgres",
        "postgres-bad-port": "postgresql://postgres@127.0.0.1:notaport/postgres",
        "postgres-bad-option": f"postgresql://postgres@127.0.0.1:{pg_port}/postgres?bogus=1",
        "postgres-no-such-role": f"postgresql://nosuchrole:s3cretpw@127.0.0.1:{pg_port}/postgres",
        "postgres-no-such-db": f"postgresql://postgres@127.0.0.1:{pg_port}/nosuchdb",
    }[case]


# func_only: the bound is on the construction, not on starting the session servers.
@pytest.mark.timeout(4, func_only=True)
@pytest.mark.parametrize(
    "case",
    [
        "redis-refused",
        "redis-bad-port",
        "redis-no-such-db",
        "redis-no-such-user",
        "postgres-refused",
        "postgres-bad-port",
        "postgres-bad-option",
        "postgres-no-such-role",
        "postgres-no-such-db",
    ],
)
def test_unusable_server_url_fails_at_construction(
    case: str, redis_server: RedisServer, postgres_server: PostgresServer, name: str
) -> None:
    """BackendUnavailable at once (well within any connect timeout), saying what to do,
    naming the server and never showing the password."""
    url = _bad_url(case, redis_server.port, postgres_server.port)
    with pytest.raises(crosslock.BackendUnavailable) as caught:
        crosslock.Lock(name, backend=url)
    message = str(caught.value)
    assert re.search(r"start the server|fix the (URL|user)|bad postgresql URL", message), message
    assert "127.0.0.1" in message
    assert "s3cretpw" not in message


@pytest.mark.timeout(4, func_only=True)
def test_redis_wrong_password_fails_at_construction(name: str) -> None:
    server = RedisServer()
    try:
        import redis

        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("requirepass", "rightpw")
        admin.close()
        base = f"127.0.0.1:{server.port}/0"
        for url in (f"redis://:wrongpw@{base}", f"redis://{base}"):
            with pytest.raises(crosslock.BackendUnavailable, match="fix the user or password") as caught:
                crosslock.Lock(name, backend=url)
            assert "wrongpw" not in str(caught.value)
        lock = crosslock.Lock(name, backend=f"redis://:rightpw@{base}")  # the right one works
        assert lock.acquire(timeout=WAIT)
        lock.release()
        del lock
    finally:
        server.close()


@pytest.mark.parametrize(
    ("lease", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (math.inf, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_redis_rejects_bad_lease(
    redis_server: RedisServer, name: str, lease: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="lease"):
        crosslock.Lock(name, backend=redis_server.url, lease=lease)


def test_redis_options(redis_server: RedisServer, name: str) -> None:
    url = redis_server.url
    with pytest.raises(ValueError, match="cannot take shared locks"):
        crosslock.Lock(name, backend=url, shared=True)
    with pytest.raises(TypeError, match="leese"):
        crosslock.Lock(name, backend=url, leese=1)
    for lease in (0.5, 2, None):
        lock = crosslock.Lock(name, backend=url, lease=lease)
        assert lock.acquire(timeout=WAIT)
        lock.release()


def test_postgres_takes_no_lease(postgres_server: PostgresServer, name: str) -> None:
    with pytest.raises(TypeError, match="lease"):
        crosslock.Lock(name, backend=postgres_server.url, lease=5)


def test_postgres_shared_holders(postgres_server: PostgresServer, name: str, procs: Procs) -> None:
    url = postgres_server.url
    reader1 = Client(procs, url, name, shared=True)
    reader2 = Client(procs, url, name, shared=True)
    writer = Client(procs, url, name)
    _, got1, token1, _ = reader1.acquire(WAIT)
    _, got2, token2, _ = reader2.acquire(WAIT)  # while reader1 holds it
    assert got1
    assert got2
    assert token1 is not None
    assert token2 is not None
    assert token2 > token1
    assert reader1.ask("held") == ("held", True)
    assert writer.acquire(0.2)[1] is False  # an exclusive holder is excluded
    assert reader1.ask("release") == ("released", False)
    assert writer.acquire(0.1)[1] is False  # reader2 still holds it
    writer.start_acquire(WAIT)
    assert reader2.ask("release") == ("released", False)
    _, got, wtoken, held = writer.recv()
    assert got
    assert held
    assert wtoken is not None
    assert wtoken > token2
    assert reader1.acquire(0.2)[1] is False  # no shared hold during an exclusive one
    reader1.start_acquire(WAIT)
    assert writer.ask("release") == ("released", False)
    _, got, _, held = reader1.recv()
    assert got
    assert held
    assert reader1.ask("release") == ("released", False)
    for client in (reader1, reader2, writer):
        client.exit()


# -- waiting --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, WAIT], ids=["no-timeout", "timeout"])
def test_waiter_in_another_process_is_woken_by_release(
    url: str, name: str, procs: Procs, timeout: float | None
) -> None:
    lock = crosslock.Lock(name, backend=url)  # Redis: the default lease, renewed throughout
    assert lock.acquire(timeout=WAIT)
    waiter = Client(procs, url, name)
    waiter.start_acquire(timeout)
    assert not waiter.conn.poll(0.2), "the waiter returned while the lock was held"
    lock.release()
    _, got, _, held = waiter.recv()
    assert got is True
    assert held is True
    assert not lock.acquire(timeout=0)
    assert waiter.ask("release") == ("released", False)
    waiter.exit()


def test_timed_out_waiter_never_holds_later(url: str, name: str, procs: Procs) -> None:
    lock = crosslock.Lock(name, backend=url)
    assert lock.acquire(timeout=WAIT)
    late = Client(procs, url, name)
    _, got, token, held = late.acquire(0.1)
    assert got is False
    assert token is None
    assert held is False
    lock.release()
    third = Client(procs, url, name)
    _, got, _, _ = third.acquire(WAIT)
    assert got
    assert late.ask("held") == ("held", False)
    assert third.ask("release") == ("released", False)
    # The timed-out waiter is alive and took nothing meanwhile: the lock is free.
    assert not lock.locked()
    assert late.ask("held") == ("held", False)
    assert lock.acquire(timeout=0)
    lock.release()
    late.exit()
    third.exit()


@contextlib.contextmanager
def redis_queue_pushes(url: str, name: str) -> Iterator[Any]:
    """Yield ``await_push()``, which returns once a waiter has queued up for Redis lock
    ``name`` (a keyspace event, pushed by the server: no polling)."""
    import redis

    admin: Any = redis.Redis.from_url(url)
    admin.config_set("notify-keyspace-events", "Kl")
    db = admin.connection_pool.connection_kwargs.get("db", 0)
    events = admin.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"__keyspace@{db}__:crosslock:{{{name}}}:queue")

    def await_push() -> None:
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no waiter queued up in time"
            message = events.get_message(timeout=left)
            if message is not None and message["data"] == b"rpush":
                return

    try:
        yield await_push
    finally:
        events.close()
        admin.close()


def test_redis_release_hands_over_in_queue_order(redis_server: RedisServer, name: str, procs: Procs) -> None:
    """A release hands the lock to the first waiter in the queue, with a larger token;
    a later waiter comes next (a waiter served out of order would block this test)."""
    url = redis_server.url
    lock = crosslock.Lock(name, backend=url, lease=LEASE)
    assert lock.acquire(timeout=WAIT)
    token = lock.token
    assert token is not None
    first = Client(procs, url, name, lease=LEASE)
    second = Client(procs, url, name, lease=LEASE)
    with redis_queue_pushes(url, name) as await_push:
        first.start_acquire(None)
        await_push()
        second.start_acquire(None)
        await_push()
    lock.release()
    first_token = granted_token(first.recv(), above=token)
    assert not lock.acquire(timeout=0)
    assert first.ask("release") == ("released", False)
    granted_token(second.recv(), above=first_token)
    assert second.ask("release") == ("released", False)
    assert lock.acquire(timeout=0)
    lock.release()
    first.exit()
    second.exit()


def test_redis_killed_waiter_in_the_queue_delays_by_its_lease_at_most(
    redis_server: RedisServer, name: str, procs: Procs
) -> None:
    """A waiter killed while queued may be handed the lock (its queue entry lives a
    little longer than it); that hold ends with its lease and the next waiter gets it."""
    url = redis_server.url
    lock = crosslock.Lock(name, backend=url, lease=LEASE)
    assert lock.acquire(timeout=WAIT)
    doomed = Client(procs, url, name, lease=LEASE)
    with redis_queue_pushes(url, name) as await_push:
        doomed.start_acquire(None)
        await_push()
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.proc.join(WAIT)
    lock.release()
    survivor = Client(procs, url, name, lease=LEASE)
    _, got, _, held = survivor.acquire(WAIT)
    assert got
    assert held
    assert survivor.ask("release") == ("released", False)
    survivor.exit()


@contextlib.contextmanager
def row_locked(url: str, name: str) -> Iterator[None]:
    """Another transaction holds the lock's row in crosslock's table (as a maintenance job
    on the table would, or, for an instant, another process's grant)."""
    import psycopg

    from crosslock._backends._postgres import lock_key

    with psycopg.connect(url) as other:  # committed (the row freed) on the way out
        row = other.execute(
            "SELECT 1 FROM crosslock_locks WHERE key = %s FOR UPDATE", (lock_key(name),)
        ).fetchone()
        assert row is not None, "the lock has no row yet"
        yield


def _holds_nothing_after(reply: Any, waiter: Client, lock: crosslock.Lock) -> None:
    """The waiter's acquire answered: if it got the lock, it releases it; either way nobody
    holds the lock afterwards (the waiter's session kept nothing)."""
    assert reply[0] == "acquired", reply
    got = reply[1]
    assert waiter.ask("held") == ("held", got)
    if got:
        assert waiter.ask("release") == ("released", False)
    assert not lock.locked(), f"acquire returned {got}, yet the waiter's session still holds the lock"
    assert lock.acquire(timeout=0)
    lock.release()


def test_postgres_acquire_timeout_holds_while_the_row_is_locked(
    postgres_server: PostgresServer, name: str, procs: Procs
) -> None:
    """A free lock whose row is locked: acquire(timeout=1.0) still returns in time."""
    url = postgres_server.url
    lock = crosslock.Lock(name, backend=url)
    assert lock.acquire(timeout=WAIT)  # the lock's row now exists
    lock.release()
    waiter = Client(procs, url, name)
    assert waiter.ask("locked") == ("locked", False)  # connected; the lock is free
    with row_locked(url, name):
        waiter.start_acquire(1.0)
        answered = waiter.conn.poll(FROZEN_BOUND)
        assert answered, f"acquire(timeout=1.0) hung for {FROZEN_BOUND:g} s on a locked table row"
        reply = waiter.conn.recv()
    _holds_nothing_after(reply, waiter, lock)
    waiter.exit()


def test_postgres_waiter_timing_out_in_the_grant_holds_nothing(
    postgres_server: PostgresServer, name: str, procs: Procs
) -> None:
    """The wait's timeout may strike after the advisory lock was granted, while the grant
    statement waits for the lock's row: the waiter must then hold nothing (and not hang)."""
    url = postgres_server.url
    lock = crosslock.Lock(name, backend=url)
    assert lock.acquire(timeout=WAIT)
    waiter = Client(procs, url, name)
    assert waiter.acquire(0)[1] is False  # connected, and excluded
    with row_locked(url, name):
        waiter.start_acquire(1.0)
        # Granted at this release (if the waiter waits already; else at its first try),
        # the waiter's grant statement then waits on the row until the timeout strikes.
        lock.release()
        answered = waiter.conn.poll(FROZEN_BOUND)
        assert answered, f"acquire(timeout=1.0) hung for {FROZEN_BOUND:g} s on a locked table row"
        reply = waiter.conn.recv()
    _holds_nothing_after(reply, waiter, lock)
    waiter.exit()


# -- fencing tokens ------------------------------------------------------------------------------------


def test_tokens_increase_across_processes_and_client_restarts(url: str, name: str, procs: Procs) -> None:
    lock = crosslock.Lock(name, backend=url)
    assert lock.token is None
    tokens: list[int] = []
    for ctx in (FORK, SPAWN, SPAWN):  # each a new client process; spawn: a fresh interpreter
        client = Client(procs, url, name, ctx=ctx)
        assert client.ask("token") == ("token", None)
        _, got, token, _ = client.acquire(WAIT)
        assert got
        assert token is not None
        assert client.ask("token") == ("token", token)  # the same for the whole hold
        tokens.append(token)
        assert client.ask("release") == ("released", False)
        assert client.ask("token") == ("token", None)
        client.exit()
        assert lock.acquire(timeout=WAIT)
        mine = lock.token
        assert mine is not None
        assert lock.token == mine
        tokens.append(mine)
        lock.release()
        assert lock.token is None
    assert tokens == sorted(set(tokens)), f"tokens do not increase: {tokens}"


# -- the command line ------------------------------------------------------------------------------------


def _env(lock_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CROSSLOCK_DIR"] = lock_dir
    env.pop("CROSSLOCK_BACKEND", None)
    return env


def _cli(lock_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crosslock", *args],
        env=_env(lock_dir),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def _cli_holder(lock_dir: str, url: str, name: str, fifo: Path) -> Iterator[subprocess.Popen[str]]:
    """``crosslock run --backend URL NAME -- python -c ...``: the command writes ``ready``
    to ``fifo`` (read here, bounded), then waits for a line on its stdin and exits 3."""
    script = (
        "import sys; f = open(sys.argv[1], 'w'); f.write('ready\\n'); f.close(); "
        "sys.stdin.readline(); sys.exit(3)"
    )
    os.mkfifo(fifo)
    # O_RDWR: opening the FIFO never blocks, and a writer that never comes is caught below.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crosslock", "run", "--backend", url, name, "--",
         sys.executable, "-c", script, str(fifo)],
        env=_env(lock_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        import select

        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready, f"the command never ran under the lock (crosslock run exit: {proc.poll()})"
        assert os.read(fd, 100) == b"ready\n"
        yield proc
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CLI_TIMEOUT)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate("go\n", timeout=CLI_TIMEOUT)
    return proc.returncode, err


def test_cli_run_with_server_backend(kind: str, url: str, name: str, lock_dir: str, tmp_path: Path) -> None:
    with _cli_holder(lock_dir, url, name, tmp_path / "fifo") as proc:
        lock = crosslock.Lock(name, backend=url)
        assert lock.locked()
        assert not lock.acquire(timeout=0)  # the command runs under the lock
        busy = _cli(
            lock_dir, "run", "--backend", url, "--timeout", "0.2", name, "--", sys.executable, "-c", ""
        )
        assert busy.returncode == 75, busy.stderr
        assert name in busy.stderr, busy.stderr
        code, err = _finish(proc)
        assert code == 3, err  # the command's status
        assert "warning" not in err, err
    assert not lock.locked()
    assert lock.acquire(timeout=0)
    lock.release()


def test_cli_status_with_server_backend_shows_the_holder(
    kind: str, url: str, name: str, lock_dir: str, tmp_path: Path
) -> None:
    """``crosslock status --backend URL`` lists the lock held, with the holder's pid and host."""
    with _cli_holder(lock_dir, url, name, tmp_path / "fifo") as proc:
        result = _cli(lock_dir, "status", "--backend", url, "--json")
        assert result.returncode == 0, result.stderr
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        assert name in rows, rows
        row = rows[name]
        assert row["state"].startswith("held"), row
        assert row["pids"] == [proc.pid], row  # the crosslock run process holds it
        assert row["host"] == socket.gethostname(), row
        table = _cli(lock_dir, "status", "--backend", url, name)
        assert table.returncode == 0, table.stderr
        line = next((ln for ln in table.stdout.splitlines() if ln.startswith(name)), None)
        assert line is not None, table.stdout
        assert "held" in line, line
        assert str(proc.pid) in line, line
        assert socket.gethostname() in line, line
        code, err = _finish(proc)
        assert code == 3, err
    result = _cli(lock_dir, "status", "--backend", url, "--json", name)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["state"], row["pids"]) == (name, "free", []), row


def test_collected_lock_does_not_wait_for_the_renewers_lock(url: str, name: str) -> None:
    from crosslock._backends._server import renewer

    def make() -> crosslock.Lock:
        lock = crosslock.Lock(name, backend=url)
        with lock:
            pass
        return lock

    collect_lock_while_holding(make, renewer()._lock)
