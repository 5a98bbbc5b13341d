"""Command line of the benchmark suite.

    python -m benchmarks [--quick | --smoke] [--out DIR] [--subject NAME] [--measure WHAT] [--servers]
    python benchmarks/run.py ...          (the same, run as a script)

Prints the Markdown report to stdout (progress goes to stderr) and writes
latest.md, latest.json and latest.png into DIR. Exits 1 when a measurement
failed: lost updates, a subject that raised, or a server that did not start.
``--servers`` (or ``--measure servers``) adds the server part: the suite starts
a Redis and a PostgreSQL server of its own for it, and stops them after it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: import the package beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from . import facts, report, sandbox, servers, subjects
from .model import Section, Table
from .suite import DEFAULT_MEASUREMENTS, MEASUREMENTS, MODES, SERVER_MODES, Suite
from .targets import local_goals

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark crosslock against raw flock, multiprocessing.Lock and its peers.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the shortest run, a few iterations of everything (for tests; wins over --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="results folder (default: %(default)s)"
    )
    parser.add_argument(
        "--subject",
        action="append",
        metavar="NAME",
        help="only subjects whose name contains NAME (repeatable; raw flock always runs)",
    )
    parser.add_argument(
        "--measure",
        action="append",
        choices=MEASUREMENTS,
        help="only this measurement (repeatable); servers: the server part only",
    )
    parser.add_argument(
        "--servers",
        action="store_true",
        help="add the server part: start a redis-server and a PostgreSQL cluster on loopback "
        "(stopped at the end) and measure the Redis and PostgreSQL locks",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        help="seconds per measurement and subject before it is killed (default 60; 20 with --smoke)",
    )
    return parser.parse_args(argv)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup of the running measurement


def _run(suite: Suite, measurements: list[str]) -> list[Table]:
    tables: list[Table] = []
    for name in MEASUREMENTS:
        if name not in measurements:
            continue
        if name == "uncontended":
            tables.append(suite.uncontended())
        elif name == "handoff":
            tables.append(suite.handoff())
        elif name == "throughput":
            tables += suite.throughput()
        elif name == "imports":
            tables.append(suite.imports())
        elif name == "memory":
            tables.append(suite.memory())
    return tables


def _run_servers(suite: Suite, mode: str, wanted: list[str] | None) -> tuple[Section, list[dict[str, Any]]]:
    """Start the servers, measure the server subjects, stop the servers."""
    with servers.started(_progress) as running:
        urls = {s.kind: s.url if s.ok else None for s in (running.redis, running.postgres)}
        chosen = subjects.available_servers(urls, wanted)
        for subject, why in chosen:
            if why:
                _progress(f"skipping {subject.name}: {why}")
        section = suite.servers(running, chosen, SERVER_MODES[mode])
    listed = [
        {"name": s.name, "status": "skipped" if why else "ok", "detail": why or s.note} for s, why in chosen
    ]
    return section, listed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    config = MODES[mode]
    if args.time_limit:
        config = dataclasses.replace(config, time_limit_s=args.time_limit)
    started = time.monotonic()
    machine = facts.machine()
    signal.signal(signal.SIGTERM, _terminate)
    sandbox.become_subreaper()
    # Subjects get their backends' defaults, whatever the caller's environment says.
    os.environ.pop("CROSSLOCK_BACKEND", None)
    chosen = subjects.available(args.subject)
    for subject, why in chosen:
        if why:
            _progress(f"skipping {subject.name}: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="crosslock-bench-"))
    os.environ["CROSSLOCK_DIR"] = str(workdir)
    suite = Suite(config, chosen, workdir, _progress)
    measurements = args.measure or list(DEFAULT_MEASUREMENTS)
    with_servers = args.servers or "servers" in measurements
    section: Section | None = None
    server_subjects: list[dict[str, Any]] = []
    try:
        tables = _run(suite, measurements)
        if with_servers:
            section, server_subjects = _run_servers(suite, mode, args.subject)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        sandbox.reap_orphans(wait=2.0)
    wall = time.monotonic() - started
    packages = subjects.versions(servers=with_servers)
    goals = local_goals(tables)
    text = report.markdown(
        tables, machine, packages, mode, wall, suite.failures, suite.problems, section, goals
    )
    extra: dict[str, Any] = {"targets": report.goals_json(goals)}
    if section is not None:
        extra["server_backends"] = report.section_json(section)
    data = report.to_json(
        tables,
        suite="crosslock benchmarks",
        mode=mode,
        wall_s=round(wall, 2),
        machine=machine,
        packages=packages,
        config=dataclasses.asdict(config),
        subjects=[
            {"name": s.name, "status": "skipped" if why else "ok", "detail": why or s.note}
            for s, why in chosen
        ]
        + server_subjects,
        failures=suite.failures,
        problems=suite.problems,
        **extra,
    )
    print(text, flush=True)
    written = report.write(args.out, text, data, tables, section)
    _progress(f"wrote {', '.join(str(p) for p in written)} ({time.monotonic() - started:.1f} s in all)")
    if suite.failures:
        _progress("FAILED:\n" + "\n".join(f"  {f}" for f in suite.failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
