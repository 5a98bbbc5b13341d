"""The ``postgresql://`` backend: a session-level advisory lock in PostgreSQL.

Each lock has a dedicated connection per process (not from a pool: a pool
would hand the session, and with it the lock, to someone else). The lock's
name maps to a 64-bit advisory-lock key; a small table ``crosslock_locks``
records the name, the fencing counter and the holder. Waiting happens in the
server (``pg_advisory_lock``), so the release wakes the waiter; a finite
timeout is the server's ``lock_timeout``, which aborts the wait, so a
timed-out waiter never holds the lock later. The grant and the fencing token
come from one statement, hence one transaction.

A holder that dies frees the lock when its connection closes; a holder whose
connection is lost has lost the lock (``LockLost``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import time
from typing import Any

from .. import _record
from .._errors import BackendUnavailable, LockLost
from ._base import Backend, no_options
from ._server import ServerTarget, check_name, redact, renewer

__all__ = ["PostgresBackend", "PostgresTarget", "status"]

_TABLE = """
CREATE TABLE IF NOT EXISTS crosslock_locks (
    key bigint PRIMARY KEY,
    name text NOT NULL,
    token bigint NOT NULL,
    pid integer,
    host text,
    since double precision,
    command text
)
"""

# The grant and the token in one statement: the CTE takes the lock (or tries
# to; as text, so that the planner cannot fold the call away), and the
# upsert counts the hold only when it was granted ('false' only from a try).
_GRANT = """
WITH grant_ AS (SELECT {fn}(%(key)s)::text AS ok)
INSERT INTO crosslock_locks AS t (key, name, token, pid, host, since)
SELECT %(key)s, %(name)s, 1, %(pid)s, %(host)s, %(since)s FROM grant_ WHERE ok <> 'false'
ON CONFLICT (key) DO UPDATE SET token = t.token + 1, name = EXCLUDED.name, pid = EXCLUDED.pid,
    host = EXCLUDED.host, since = EXCLUDED.since, command = NULL
RETURNING token
"""


def _module() -> Any:
    try:
        import psycopg
    except ImportError:
        raise BackendUnavailable(
            "the postgres backend needs psycopg 3: pip install 'crosslock[postgres]'"
        ) from None
    return psycopg


def lock_key(name: str) -> int:
    """The 64-bit advisory-lock key of a lock name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


#: The session's lock_timeout outside waits: bounds a try's wait on the
#: crosslock_locks row (held only for a moment by another grant).
_DEFAULT_LOCK_TIMEOUT = "2s"
#: How long past a deadline (or for a release) a silent server is given before
#: crosslock cuts the connection: nobody hangs on a frozen server.
WATCHDOG_GRACE = 5.0
RELEASE_LIMIT = 5.0


@contextlib.contextmanager
def _watchdog(conn: Any, seconds: float | None) -> Any:
    """Shut the connection's socket down if the block takes longer than ``seconds``."""
    if seconds is None:
        yield
        return
    fired: list[bool] = []

    def cut() -> None:
        fired.append(True)
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    key = id(fired)
    scheduler = renewer()  # the process's timer thread, shared with lease renewal
    scheduler.add(key, time.monotonic() + seconds, lambda: cut())
    try:
        yield
    except _module().OperationalError as exc:
        if fired:
            raise _module().OperationalError(f"the server did not answer within {seconds:g} s") from exc
        raise
    finally:
        scheduler.remove(key)


def _query_timed_out(exc: BaseException) -> bool:
    return "did not answer within" in str(exc)


def _connect(url: str) -> Any:
    psycopg = _module()
    try:
        conn = psycopg.connect(
            url, autocommit=True, connect_timeout=5,
            options=f"-c lock_timeout={_DEFAULT_LOCK_TIMEOUT}",
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(
            f"cannot connect to postgresql at {redact(url)} ({text}); start the server, "
            "or fix the URL, user or password"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise BackendUnavailable(f"bad postgresql URL {redact(url)}: {exc}") from None
    try:
        conn.execute(_TABLE)
    except psycopg.errors.UniqueViolation:
        pass  # created concurrently by another process
    except psycopg.OperationalError as exc:
        conn.close()
        raise BackendUnavailable(
            f"cannot connect to postgresql at {redact(url)} ({str(exc).strip()}); "
            "start the server, or fix the URL, user or password"
        ) from None
    except psycopg.Error as exc:
        conn.close()
        raise BackendUnavailable(
            f"cannot create table crosslock_locks at {redact(url)} ({exc}); "
            "grant CREATE on the schema, or create the table once as its owner"
        ) from None
    return conn


class PostgresTarget(ServerTarget):
    backend_name = "postgres"
    supports_shared = True

    @classmethod
    def create(cls, name: object, spec: str, options: dict[str, Any]) -> PostgresTarget:
        no_options(cls.backend_name, options)
        _module()
        return cls(spec, check_name(cls.backend_name, name))

    def open(self) -> PostgresBackend:
        return PostgresBackend(self)


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, target: PostgresTarget) -> None:
        self._psycopg = _module()
        self._target = target
        self._key = lock_key(target.name)
        self._conn: Any = _connect(target.url)
        self._shared = False
        self._token: int | None = None
        self._holding = False

    def _params(self) -> dict[str, Any]:
        return {
            "key": self._key,
            "name": self._target.name,
            "pid": os.getpid(),
            "host": _record.host(),
            "since": time.time(),
        }

    def _unreachable(self, exc: BaseException, doing: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"lost the connection to postgresql at {redact(self._target.url)} while trying to "
            f"{doing} lock {self._target.name!r} ({exc}); check that the server runs"
        )

    # -- acquire ---------------------------------------------------------------

    def acquire(self, shared: bool, deadline: float | None) -> bool:
        psycopg = self._psycopg
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = _connect(self._target.url)
            try:
                return self._acquire(self._conn, shared, deadline)
            except psycopg.OperationalError as exc:
                # Nothing is held now (the session is gone). A connection that
                # broke while idle (a server restart) gets one fresh try.
                self._discard()
                if attempt == 2 or _query_timed_out(exc):
                    raise self._unreachable(exc, "acquire") from None
            except BaseException:
                # Interrupted (Ctrl-C) mid-wait: the session may or may not
                # have been granted the lock. Closing it frees whatever it holds.
                self._discard()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire(self, conn: Any, shared: bool, deadline: float | None) -> bool:
        psycopg = self._psycopg
        suffix = "_shared" if shared else ""
        remaining = None if deadline is None else deadline - time.monotonic()
        trying = remaining is not None and remaining < 0.001
        try:
            if trying:
                # One try; the session's lock_timeout bounds a wait on the row.
                with _watchdog(conn, RELEASE_LIMIT):
                    row = conn.execute(
                        _GRANT.format(fn=f"pg_try_advisory_lock{suffix}"), self._params()
                    ).fetchone()
            else:
                # The wait's own lock_timeout, local to the transaction that the
                # two pipelined statements share: one round trip, and the
                # session's setting is back as soon as the grant commits.
                wait_ms = 0 if remaining is None else math.ceil(remaining * 1000)
                with _watchdog(conn, None if remaining is None else remaining + WATCHDOG_GRACE):
                    with conn.pipeline():
                        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
                        cursor = conn.execute(_GRANT.format(fn=f"pg_advisory_lock{suffix}"), self._params())
                    row = cursor.fetchone()
        except psycopg.errors.LockNotAvailable:
            # The server ended the wait: on the advisory lock (nothing held),
            # or on the row after the grant -- so give back what may be held.
            conn.execute(f"SELECT pg_advisory_unlock{suffix}(%s)", (self._key,))
            return False
        # (Anything else -- an interrupt, a lost connection -- propagates, and
        # acquire() discards the session, which frees whatever it held.)
        return self._granted(row, shared)

    def _granted(self, row: Any, shared: bool) -> bool:
        if row is None:
            return False
        self._token, self._shared, self._holding = int(row[0]), shared, True
        return True

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._holding = False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- release ---------------------------------------------------------------

    def release(self) -> None:
        psycopg = self._psycopg
        suffix = "_shared" if self._shared else ""
        self._token, self._holding = None, False
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._discard()
            raise self._lost_error("its connection to the server was lost")
        try:
            with _watchdog(conn, RELEASE_LIMIT):
                row = conn.execute(f"SELECT pg_advisory_unlock{suffix}(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:
            self._discard()
            raise self._lost_error(f"the server could not be reached to release it ({exc})") from None
        if not row or not row[0]:
            raise self._lost_error("the server no longer had it (was the session reset?)")

    def _lost_error(self, why: str) -> LockLost:
        return LockLost(
            f"lock {self._target.name!r} at {redact(self._target.url)} was lost before its release: "
            f"{why}; the server frees a session's locks when its connection ends, so others may "
            "have held it since"
        )

    def lost(self) -> bool:
        conn = self._conn
        return self._holding and (conn is None or conn.closed or conn.broken)

    # -- queries ---------------------------------------------------------------

    def locked(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self._target.url)
        key = self._key & 0xFFFFFFFFFFFFFFFF
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = (%s::bigint)::oid AND objid = (%s::bigint)::oid AND objsubid = 1",
                (key >> 32, key & 0xFFFFFFFF),
            ).fetchone()
        except self._psycopg.OperationalError as exc:
            self._discard()
            raise self._unreachable(exc, "query") from None
        return bool(row and row[0])

    def token(self, shared: bool, since: float) -> int:
        assert self._token is not None
        return self._token

    def publish(self, since: float, details: dict[str, Any]) -> None:
        if self._conn is None or "command" not in details:
            return
        with contextlib.suppress(Exception):
            self._conn.execute(
                "UPDATE crosslock_locks SET command = %s WHERE key = %s", (details["command"], self._key)
            )

    # -- lifetime --------------------------------------------------------------

    def forget(self) -> None:
        # The parent's session must survive: point our copy of its socket at
        # /dev/null, so that nothing the child does (or a finalizer) can end it.
        conn, self._conn = self._conn, None
        self._holding, self._token = False, None
        if conn is not None:
            with contextlib.suppress(Exception):
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, conn.pgconn.socket)
                os.close(devnull)
            _orphans.append(conn)

    def close(self) -> None:
        self._discard()


#: Connections inherited across fork, kept so that no finalizer runs on them.
_orphans: list[Any] = []


def status(url: str, names: list[str]) -> list[dict[str, Any]]:
    """Rows for ``crosslock status --backend postgresql://...``."""
    conn = _connect(url)
    try:
        rows = conn.execute(
            """
            SELECT name, token, pid, host, since, command, EXISTS (
                SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid = ((key >> 32) & 4294967295)::oid
                AND l.objid = (key & 4294967295)::oid
                AND l.objsubid = 1) AS held
            FROM crosslock_locks ORDER BY name
            """
        ).fetchall()
    finally:
        conn.close()
    out = []
    for name, token, pid, host, since, command, held in rows:
        if names and name not in names:
            continue
        out.append(
            {
                "name": name,
                "path": None,
                "state": "held" if held else "free",
                "pids": [pid] if held and pid else [],
                "host": host if held else None,
                "since": since if held else None,
                "token": token,
                "command": command if held else None,
            }
        )
    known = {r["name"] for r in out}
    out += [
        {"name": n, "path": None, "state": "free", "pids": [], "host": None, "since": None, "token": None}
        for n in names
        if n not in known
    ]
    return out
