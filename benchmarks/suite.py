"""The suite: each measurement over every subject, each in a measuring process
under a time limit, collected into tables."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import measure, sandbox
from .model import ERROR, FAILED, OK, SKIPPED, TIMED_OUT, Column, Goal, Row, Section, Table
from .report import TIMES
from .servers import Servers
from .stats import median
from .subjects import BASELINE, ROUND_TRIP, SUBJECTS, Subject

__all__ = ["DEFAULT_MEASUREMENTS", "MEASUREMENTS", "MODES", "SERVER_MODES", "Config", "ServerConfig", "Suite"]

#: Measurements in the order they run (``--measure`` picks some).
MEASUREMENTS = ("uncontended", "handoff", "throughput", "imports", "memory", "servers")
#: What runs when ``--measure`` is not given: all but the opt-in server part
#: (``--servers`` adds it).
DEFAULT_MEASUREMENTS = MEASUREMENTS[:-1]


@dataclass(frozen=True)
class Config:
    mode: str
    #: repetitions of the uncontended measurement, and each one's batch length
    reps: int
    batch_s: float
    handoffs: int
    #: a subject's hand-offs stop early past this many seconds (slow pollers)
    handoff_budget_s: float
    #: the hand-offs are split into this many rounds, each a fresh pair of
    #: processes, subjects interleaved (where the scheduler places a pair
    #: moves its hand-offs by up to 4x on a small VM: one pair would be luck)
    handoff_rounds: int
    processes: tuple[int, ...]
    duration_s: float
    import_runs: int
    memory_locks: int
    #: per measurement and subject; past it the measuring process is killed
    time_limit_s: float


MODES = {
    "full": Config("full", 7, 0.1, 400, 30.0, 10, (2, 4, 8), 1.0, 15, 10_000, 60.0),
    "quick": Config("quick", 5, 0.02, 50, 8.0, 2, (2, 4, 8), 0.3, 5, 2_000, 60.0),
    "smoke": Config("smoke", 2, 0.002, 6, 2.0, 1, (2,), 0.05, 1, 200, 20.0),
}


@dataclass(frozen=True)
class ServerConfig:
    """The server part's own settings (hand-offs, durations and limits are the suite's)."""

    #: Redis round trips (PINGs) timed for the server tables' baseline
    pings: int
    processes: tuple[int, ...]


SERVER_MODES = {
    "full": ServerConfig(1000, (2, 4)),
    "quick": ServerConfig(1000, (2, 4)),
    "smoke": ServerConfig(50, (2,)),
}

#: The issue's targets for crosslock's Redis backend.
TARGET_OF_ROUND_TRIP = 3.0
TARGET_OVER_REDIS_PY = 20.0

IMPORTED = ("fcntl", "crosslock", "filelock", "portalocker", "fasteners")

HANDOFF_COLUMNS = (
    Column("median_ns", "hand-off median", "time", ratio=True),
    Column("p99_ns", "hand-off p99", "time", ratio=True),
    Column("cpu_ns_per_handoff", "waiter CPU per hand-off", "time", ratio=True),
    Column("handoffs", "hand-offs", "count"),
)
THROUGHPUT_COLUMNS = (
    Column("sections_per_s", "sections/s", "rate", ratio=True),
    Column("wait_p99_ns", "wait p99", "time", ratio=True),
    Column("wait_max_ns", "wait max", "time", ratio=True),
    Column("per_process", "sections per process, min / max", "span"),
)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _gist(detail: str) -> str:
    """The last line of a traceback: the exception."""
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()]
    return lines[-1] if lines else detail


class Suite:
    """Runs the measurements; failures (lost updates, errors) are collected in ``failures``."""

    def __init__(
        self,
        config: Config,
        subjects: list[tuple[Subject, str | None]],
        workdir: Path,
        progress: Callable[[str], None],
    ) -> None:
        self.config = config
        self.subjects = subjects
        self.workdir = workdir
        self.progress = progress
        self.failures: list[str] = []
        self.problems: list[str] = []

    # -- plumbing ----------------------------------------------------------------

    def _path(self, subject: Subject, what: str) -> str:
        return str(self.workdir / f"{_slug(subject.name)}-{what}.lock")

    def _rows(self) -> list[Row]:
        return [
            Row(s.name) if why is None else Row(s.name, status=SKIPPED, detail=why)
            for s, why in self.subjects
        ]

    def _runnable(self) -> list[Subject]:
        return [s for s, why in self.subjects if why is None]

    def _run(self, row: Row, what: str, body: Callable[[], Any]) -> Any:
        """Run ``body`` in a measuring process; on failure mark ``row`` and return ``None``."""
        outcome = sandbox.run_in_child(body, self.config.time_limit_s)
        if outcome.status == OK:
            return outcome.value
        row.status, row.detail = outcome.status, outcome.detail
        message = f"{what}: {row.subject}: {outcome.status}: {_gist(outcome.detail)}"
        if outcome.status == TIMED_OUT:
            self.problems.append(message)
        else:
            self.failures.append(message)
            self.progress(outcome.detail)
        self.progress(message)
        return None

    # -- 1. uncontended ------------------------------------------------------------

    def uncontended(self) -> Table:
        table = Table(
            "uncontended",
            "Uncontended acquire + release",
            (
                Column("ns_per_pair", "acquire + release", "time", ratio=True),
                Column("ns_per_pair", "fastest / slowest repetition", "timespan"),
            ),
            self._rows(),
            note=(
                f"One process takes and releases the lock in a loop; median of {self.config.reps} "
                "repetitions (subjects interleaved, a fresh process each)."
            ),
        )
        samples: dict[str, list[float]] = {}
        subjects = self._runnable()
        for rep in range(self.config.reps):
            shift = rep % max(len(subjects), 1)
            for subject in subjects[shift:] + subjects[:shift]:
                row = table.row(subject.name)
                if row.status != OK:
                    continue
                body = partial(measure.uncontended, subject, self._path(subject, "u"), self.config.batch_s)
                value = self._run(row, "uncontended", body)
                if value is not None:
                    samples.setdefault(subject.name, []).append(value)
            self.progress(f"uncontended: repetition {rep + 1}/{self.config.reps} done")
        for row in table.rows:
            times = samples.get(row.subject)
            if row.status == OK and times:
                row.values = {
                    "ns_per_pair": median(times),
                    "ns_per_pair_min": min(times),
                    "ns_per_pair_max": max(times),
                }
                row.extra["repetitions_ns"] = times
        return table

    # -- 2. hand-off ------------------------------------------------------------------

    def handoff(self) -> Table:
        n = self.config.handoffs
        table = Table(
            "handoff",
            "Hand-off latency",
            HANDOFF_COLUMNS,
            self._rows(),
            note=(
                "From the holder's release (its clock read just before) to the blocked waiter's "
                f"return from acquire, {n} hand-offs (fewer when they take over "
                f"{self.config.handoff_budget_s:g} s) between two processes that swap roles, in "
                f"{self._rounds()}; the holder releases {measure.SETTLE_S * 1e3:g} ms after the "
                "waiter said it is about to block. Waiter CPU: user + system time of the waiting "
                "process over its waits."
            ),
        )
        self._handoffs(table, self._runnable(), "hand-off")
        return table

    def _rounds(self) -> str:
        rounds = self.config.handoff_rounds
        if rounds == 1:
            return "one round"
        return f"{rounds} rounds of a fresh pair of processes each (subjects interleaved)"

    def _handoffs(self, table: Table, subjects: list[Subject], what: str) -> None:
        rounds = self.config.handoff_rounds
        n = -(-self.config.handoffs // rounds)
        budget = self.config.handoff_budget_s / rounds
        pooled: dict[str, list[dict[str, Any]]] = {s.name: [] for s in subjects}
        for _ in range(rounds):
            for subject in subjects:
                row = table.row(subject.name)
                if row.status != OK:
                    continue  # failed in an earlier round
                body = partial(measure.handoff, subject, self._path(subject, "h"), n, budget)
                value = self._run(row, what, body)
                if value is not None:
                    pooled[subject.name].append(value)
        for subject in subjects:
            row = table.row(subject.name)
            if row.status == OK and pooled[subject.name]:
                row.values = measure.handoff_stats(pooled[subject.name])
                self.progress(f"{what}: {subject.name}: median {row.values['median_ns'] / 1e3:.1f} µs")

    # -- 3 and 4. throughput and fairness ------------------------------------------------

    def throughput(self) -> list[Table]:
        tables = []
        duration = self.config.duration_s
        for processes in self.config.processes:
            table = Table(
                f"throughput_p{processes}",
                f"Contended throughput and fairness, {processes} processes",
                THROUGHPUT_COLUMNS,
                self._rows(),
                note=(
                    f"{processes} processes start at a barrier and for {duration:g} s each run "
                    "sections: under the lock, read a counter from a shared file, add 1, write it "
                    "back. Waits are per acquisition, over all processes; the counter must equal "
                    "the sections done."
                ),
            )
            self._sections(table, self._runnable(), processes, f"throughput P={processes}")
            tables.append(table)
        return tables

    def _sections(self, table: Table, subjects: list[Subject], processes: int, what: str) -> None:
        for subject in subjects:
            row = table.row(subject.name)
            body = partial(
                measure.throughput,
                subject,
                self._path(subject, f"t{processes}"),
                self._path(subject, f"t{processes}-counter"),
                processes,
                self.config.duration_s,
            )
            value = self._run(row, what, body)
            if value is None:
                continue
            row.values = {k: float(v) for k, v in value.items() if k != "per_process"}
            row.extra["per_process"] = value["per_process"]
            if value["counter"] != value["sections"]:
                lost = value["sections"] - value["counter"]
                row.status = FAILED
                row.detail = (
                    f"lost updates: the counter reads {value['counter']} after "
                    f"{value['sections']} sections ({lost} lost)"
                )
                message = f"{what}: {subject.name}: {row.detail}"
                self.failures.append(message)
                self.progress(message)
            self.progress(f"{what}: {subject.name}: {value['sections_per_s']:,.0f} sections/s")

    # -- 5. imports ----------------------------------------------------------------------

    def imports(self) -> Table:
        runs = self.config.import_runs
        modules = [m for m in IMPORTED if importlib.util.find_spec(m) is not None]
        table = Table(
            "imports",
            "Import cost",
            (
                Column("net_ms", "import (less interpreter start)", "ms"),
                Column("total_ms", 'python -c "import X"', "ms"),
            ),
            note=(
                f'Wall time of a fresh `python -c "import X"` less that of `python -c "pass"` run '
                f"beside it: median over {runs} rounds, bytecode cached for every module. No ratio: "
                "raw flock's import (`fcntl`) costs next to nothing."
            ),
        )
        times = measure.import_cost(modules, runs, self.config.time_limit_s, str(self.workdir))
        start = times.pop("")
        base = median(start) if start else 0.0
        table.rows.append(Row('python -c "pass"', values={"net_ms": 0.0, "total_ms": base}))
        table.rows[0].extra["runs_ms"] = start
        for module in modules:
            runs_ms = times[module]
            if not runs_ms or not start:
                table.rows.append(Row(module, status=ERROR, detail="the import failed or timed out"))
                self.failures.append(f"imports: {module}: the import failed or timed out")
                continue
            # Each import run less the interpreter start of the same round: a
            # burst of load on the machine hits both.
            net = median([t - p for t, p in zip(runs_ms, start, strict=True)])
            row = Row(module, values={"net_ms": net, "total_ms": median(runs_ms)})
            row.extra["runs_ms"] = runs_ms
            table.rows.append(row)
        self.progress("imports: done")
        return table

    # -- 6. memory ------------------------------------------------------------------------

    def memory(self) -> Table:
        count = self.config.memory_locks
        table = Table(
            "memory",
            "Memory and descriptors",
            (
                Column("locks", "locks", "count"),
                Column("fds", "open descriptors before → after", "arrow"),
                Column("rss_growth_kib", "RSS growth", "kib"),
                Column("ns_per_lock", "per lock", "time", ratio=True),
            ),
            note=(
                f"A fresh process takes and releases {count:,} distinct named locks one after the "
                'other, dropping each lock object after use (crosslock: `Lock(f"n{i}")` in a temporary '
                "`CROSSLOCK_DIR`; raw flock: open, flock, unlock, close)."
            ),
        )
        for subject, kind in ((BASELINE, "flock"), ("crosslock file", "crosslock")):
            row = Row(subject)
            folder = self.workdir / f"memory-{kind}"
            folder.mkdir(exist_ok=True)
            try:
                result = measure.memory(kind, count, str(folder), self.config.time_limit_s)
            except subprocess.TimeoutExpired:
                row.status, row.detail = TIMED_OUT, f"killed after {self.config.time_limit_s:g} s"
                self.problems.append(f"memory: {subject}: {row.status}: {row.detail}")
            except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                stderr = getattr(exc, "stderr", "") or ""
                row.status, row.detail = ERROR, f"{exc}\n{stderr}".strip()
                self.failures.append(f"memory: {subject}: error: {_gist(row.detail)}")
            else:
                row.values = {
                    "locks": result["locks"],
                    "fds_before": result["fds_before"],
                    "fds_after": result["fds_after"],
                    "rss_growth_kib": result["rss_growth_kib"],
                    "ns_per_lock": result["ns_per_lock"],
                }
                row.extra = {k: v for k, v in result.items() if k not in row.values}
            table.rows.append(row)
        self.progress("memory: done")
        return table

    # -- 7. server backends -----------------------------------------------------------

    def servers(
        self, servers: Servers, subjects: list[tuple[Subject, str | None]], config: ServerConfig
    ) -> Section:
        """The server part: one Redis round trip (the baseline of its tables),
        raw flock's hand-off for the record, then hand-off and throughput of
        the server subjects, and the targets."""
        for server in (servers.redis, servers.postgres):
            if server.status == "error":
                self.failures.append(f"servers: {server.kind}: {server.detail}")
            elif server.status == "missing":
                self.problems.append(f"servers: {server.kind}: {server.detail}")
        runnable = [s for s, why in subjects if why is None]
        rows = [
            Row(s.name) if why is None else Row(s.name, status=SKIPPED, detail=why) for s, why in subjects
        ]

        # One Redis round trip (and one PostgreSQL round trip, for the record).
        trips = Row(ROUND_TRIP)
        found: dict[str, dict[str, float]] | None = None
        if servers.redis.ok:
            pg_url = servers.postgres.url if servers.postgres.ok else None
            body = partial(measure.round_trips, servers.redis.url, pg_url, config.pings)
            found = self._run(trips, "servers: round trips", body)
        else:
            trips.status, trips.detail = SKIPPED, "no redis server"
        rtt = found["redis"] if found else {}
        if rtt:
            self.progress(f"servers: one Redis round trip: median {rtt['median_ns'] / 1e3:.1f} µs")

        # raw flock's hand-off in this run, for the record.
        flock = Row(BASELINE)
        self._handoffs(Table("", "", HANDOFF_COLUMNS, [flock]), [SUBJECTS[0]], "servers: hand-off")

        n, budget = self.config.handoffs, self.config.handoff_budget_s
        handoff = Table(
            "servers_handoff",
            "Hand-off latency",
            HANDOFF_COLUMNS,
            [_with(trips, {"median_ns": rtt.get("median_ns"), "p99_ns": rtt.get("p99_ns")})]
            + [_copy(r) for r in rows],
            note=(
                f"From the holder's release (its clock read just before) to the blocked waiter's "
                f"return from acquire, {n} hand-offs (fewer when they take over {budget:g} s) between "
                f"two processes that swap roles, in {self._rounds()}; the holder releases "
                f"{measure.SETTLE_S * 1e3:g} ms after the waiter said it is about to block. "
                f"*{ROUND_TRIP}*: median and p99 of {config.pings:,} PINGs."
            ),
            baseline_subject=ROUND_TRIP,
        )
        self._handoffs(handoff, runnable, "servers: hand-off")
        tables = [handoff]
        rate = {
            "sections_per_s": 1e9 / rtt["median_ns"],
            "wait_p99_ns": rtt["p99_ns"],
            "wait_max_ns": rtt["max_ns"],
        } if rtt else {}  # fmt: skip
        for processes in config.processes:
            table = Table(
                f"servers_throughput_p{processes}",
                f"Contended throughput and fairness, {processes} processes",
                THROUGHPUT_COLUMNS,
                [_with(trips, rate)] + [_copy(r) for r in rows],
                note=(
                    f"{processes} processes start at a barrier and for {self.config.duration_s:g} s "
                    "each run sections: under the lock, read a counter from a shared file, add 1, "
                    "write it back (the counter must equal the sections done). "
                    f"*{ROUND_TRIP}*: round trips per second, one after the other on one "
                    "connection; the p99 and max of one."
                ),
                baseline_subject=ROUND_TRIP,
            )
            self._sections(table, runnable, processes, f"servers: throughput P={processes}")
            tables.append(table)

        def median_of(subject: str) -> float | None:
            for row in handoff.rows:
                if row.subject == subject and row.status == OK:
                    return row.values.get("median_ns")
            return None

        mine = ("crosslock redis", median_of("crosslock redis"))
        goals = [
            Goal(
                "crosslock_redis_vs_round_trip",
                f"crosslock redis hand-off median within {TARGET_OF_ROUND_TRIP:g}{TIMES} of one Redis "
                "round trip",
                mine,
                (ROUND_TRIP, rtt.get("median_ns")),
                "at most",
                TARGET_OF_ROUND_TRIP,
            ),
            Goal(
                "crosslock_redis_vs_redis_py",
                "crosslock redis hand-off median \N{GREATER-THAN OR EQUAL TO} "
                f"{TARGET_OVER_REDIS_PY:g}{TIMES} faster than redis-py's default Lock",
                ("redis-py Lock", median_of("redis-py Lock")),
                mine,
                "at least",
                TARGET_OVER_REDIS_PY,
            ),
        ]
        extra: dict[str, Any] = {
            "servers": {
                "redis": servers.redis.describe(),
                "postgres": servers.postgres.describe(),
            },
            "round_trips": found or {},
            "raw_flock_handoff": {"status": flock.status, "detail": flock.detail, **flock.values},
            "config": {"pings": config.pings, "processes": list(config.processes)},
        }
        return Section("server_backends", "Server backends", tables, goals, extra)


def _copy(row: Row) -> Row:
    return Row(row.subject, row.status, row.detail)


def _with(row: Row, values: Mapping[str, float | None]) -> Row:
    """A copy of ``row`` with ``values`` (those measured)."""
    copy = _copy(row)
    copy.values = {k: v for k, v in values.items() if v is not None}
    return copy
