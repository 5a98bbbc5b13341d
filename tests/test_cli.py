"""The command line, run as real subprocesses: ``python -m crosslock`` and the console script."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import crosslock

from .conftest import WAIT

#: Bound for one command line run; a hang fails the test instead of the session.
RUN_TIMEOUT = 30.0

CROSSLOCK = [sys.executable, "-m", "crosslock"]
PY = sys.executable


def _env(lock_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CROSSLOCK_DIR"] = lock_dir
    env.pop("CROSSLOCK_BACKEND", None)
    return env


def cli(lock_dir: str, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crosslock ARGS`` to completion (killed and reaped on timeout)."""
    return subprocess.run(
        [*CROSSLOCK, *args],
        env=_env(lock_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _read_line(stream: IO[str], timeout: float = WAIT) -> str:
    """One line from a child's pipe, or fail after ``timeout`` seconds (never hangs)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the child did not write a line in time"
    return stream.readline()


class Holder:
    """``crosslock run [OPTIONS] NAME -- <cmd>`` whose command says "ready" and waits for stdin."""

    SCRIPT = "import sys; print('ready', flush=True); sys.stdin.readline()"

    def __init__(self, lock_dir: str, name: str, *options: str) -> None:
        self.proc = subprocess.Popen(
            [*CROSSLOCK, "run", *options, name, "--", PY, "-c", self.SCRIPT],
            env=_env(lock_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout)
        assert line == "ready\n", f"holder said {line!r}; stderr: {self._stderr_if_done()}"

    def _stderr_if_done(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()

    def finish(self) -> int:
        """Let the command end; return crosslock run's exit status."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(RUN_TIMEOUT)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(RUN_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders(lock_dir: str) -> Iterator[list[Holder]]:
    """Holders started by a test; each is killed if still running and reaped."""
    started: list[Holder] = []
    try:
        yield started
    finally:
        for holder in started:
            holder.cleanup()


def _start_holder(holders: list[Holder], lock_dir: str, name: str, *options: str) -> Holder:
    holder = Holder(lock_dir, name, *options)
    holders.append(holder)
    holder.wait_ready()
    return holder


# -- help and entry points ---------------------------------------------------------


def test_main_help(lock_dir: str) -> None:
    result = cli(lock_dir, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    for sub in ("run", "status", "demo"):
        assert sub in result.stdout


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ("run", ["--timeout", "--shared", "NAME", "COMMAND", "75"]),
        ("status", ["NAME", "--json"]),
        ("demo", ["usage:"]),
    ],
)
def test_subcommand_help(lock_dir: str, sub: str, expected: list[str]) -> None:
    result = cli(lock_dir, sub, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert sub in result.stdout
    for word in expected:
        assert word in result.stdout


def test_version(lock_dir: str) -> None:
    result = cli(lock_dir, "--version")
    assert result.returncode == 0, result.stderr
    assert crosslock.__version__ in result.stdout


def test_no_subcommand_is_usage_error(lock_dir: str) -> None:
    result = cli(lock_dir)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_unknown_subcommand_is_usage_error(lock_dir: str) -> None:
    result = cli(lock_dir, "frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_console_script_exists_and_runs(lock_dir: str) -> None:
    script = Path(sys.executable).parent / "crosslock"
    assert script.is_file(), f"no console script at {script}"
    assert os.access(script, os.X_OK)
    result = subprocess.run(
        [str(script), "--help"], env=_env(lock_dir), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    assert "status" in result.stdout


# -- run ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 1, 3, 42])
def test_run_exits_with_command_status(lock_dir: str, status: int) -> None:
    result = cli(lock_dir, "run", "job", "--", PY, "-c", f"raise SystemExit({status})")
    assert result.returncode == status, result.stderr


def test_run_true_and_false(lock_dir: str) -> None:
    assert cli(lock_dir, "run", "job", "--", "true").returncode == 0
    assert cli(lock_dir, "run", "job", "--", "false").returncode == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
def test_run_command_killed_by_signal(lock_dir: str, signum: int) -> None:
    code = (
        "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        f"os.kill(os.getpid(), {int(signum)})"
    )
    result = cli(lock_dir, "run", "job", "--", PY, "-c", code)
    assert result.returncode == 128 + signum, result.stderr


def test_run_passes_arguments_and_output_through(lock_dir: str) -> None:
    result = cli(
        lock_dir,
        "run",
        "job",
        "--",
        PY,
        "-c",
        "import sys; print(sys.argv[1:]); print('err', file=sys.stderr)",
        "a b",
        "--timeout",
        "-x",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['a b', '--timeout', '-x']\n"
    assert result.stderr == "err\n"


def test_run_without_double_dash(lock_dir: str) -> None:
    result = cli(lock_dir, "run", "job", PY, "-c", "print('ran')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"


_CHECK_HELD = (
    "import sys, crosslock\n"
    "lock = crosslock.Lock(sys.argv[1])\n"
    "got = lock.acquire(timeout=0)\n"
    "if got: lock.release()\n"
    "print('free' if got else 'held')\n"
)


def test_run_holds_the_lock_while_the_command_runs(lock_dir: str) -> None:
    result = cli(lock_dir, "run", "job", "--", PY, "-c", _CHECK_HELD, "job")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "held\n"
    # by path too: the same lock file
    path = os.path.join(lock_dir, "job.lock")
    result = cli(lock_dir, "run", path, "--", PY, "-c", _CHECK_HELD, "job")
    assert result.stdout == "held\n"
    # and freed afterwards
    lock = crosslock.Lock("job")
    assert lock.acquire(timeout=0)
    lock.release()


def test_run_releases_the_lock_after_a_failing_command(lock_dir: str) -> None:
    assert cli(lock_dir, "run", "job", "--", "false").returncode == 1
    lock = crosslock.Lock("job")
    assert lock.acquire(timeout=0)
    lock.release()


@pytest.mark.parametrize("timeout", ["0.2", "0"])
def test_run_timeout_exits_75_while_another_process_holds(
    lock_dir: str, tmp_path: Path, timeout: str
) -> None:
    marker = tmp_path / "ran"
    lock = crosslock.Lock("busy")
    assert lock.acquire(timeout=0)
    try:
        result = cli(
            lock_dir,
            "run",
            "--timeout",
            timeout,
            "busy",
            "--",
            PY,
            "-c",
            f"open({str(marker)!r}, 'w').close()",
        )
    finally:
        lock.release()
    assert result.returncode == 75
    assert not marker.exists(), "the command ran although the lock was not acquired"
    assert "timed out" in result.stderr or "held" in result.stderr
    assert "busy" in result.stderr
    assert result.stdout == ""
    # once free, the same command runs
    result = cli(
        lock_dir, "run", "--timeout", timeout, "busy", "--", PY, "-c", f"open({str(marker)!r}, 'w').close()"
    )
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def test_run_timeout_exits_75_while_shared_holders_hold(lock_dir: str) -> None:
    lock = crosslock.Lock("busy", shared=True)
    assert lock.acquire(timeout=0)
    try:
        exclusive = cli(lock_dir, "run", "--timeout", "0.2", "busy", "--", "true")
        shared = cli(lock_dir, "run", "--shared", "--timeout", "0", "busy", "--", "true")
    finally:
        lock.release()
    assert exclusive.returncode == 75
    assert shared.returncode == 0, shared.stderr


def test_run_missing_command_exits_127(lock_dir: str) -> None:
    result = cli(lock_dir, "run", "job", "--", "crosslock-no-such-command-xyz", "arg")
    assert result.returncode == 127
    assert "crosslock-no-such-command-xyz" in result.stderr
    assert "not found" in result.stderr
    lock = crosslock.Lock("job")
    assert lock.acquire(timeout=0), "the lock stayed held after a missing command"
    lock.release()


def test_run_not_executable_exits_126(lock_dir: str, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = cli(lock_dir, "run", "job", "--", str(script))
    assert result.returncode == 126
    assert str(script) in result.stderr


@pytest.mark.parametrize("args", [["job"], ["job", "--"], ["--timeout", "1", "job"]])
def test_run_without_command_exits_2(lock_dir: str, args: list[str]) -> None:
    result = cli(lock_dir, "run", *args)
    assert result.returncode == 2
    assert "command" in result.stderr.lower()
    assert result.stdout == ""


def test_run_without_name_exits_2(lock_dir: str) -> None:
    result = cli(lock_dir, "run")
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


def test_run_shared_lets_two_shared_holders_in(lock_dir: str) -> None:
    inner = [*CROSSLOCK, "run", "--shared", "--timeout", "0", "X", "--", PY, "-c", "print('inner ran')"]
    result = cli(lock_dir, "run", "--shared", "X", "--", *inner)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "inner ran\n"


def test_run_exclusive_inside_shared_hold_exits_75(lock_dir: str) -> None:
    inner = [*CROSSLOCK, "run", "--timeout", "0", "X", "--", PY, "-c", "print('inner ran')"]
    result = cli(lock_dir, "run", "--shared", "X", "--", *inner)
    assert result.returncode == 75
    assert "inner ran" not in result.stdout


def test_run_shared_inside_exclusive_hold_exits_75(lock_dir: str) -> None:
    inner = [*CROSSLOCK, "run", "--shared", "--timeout", "0", "X", "--", "true"]
    result = cli(lock_dir, "run", "X", "--", *inner)
    assert result.returncode == 75


def test_run_exclusive_inside_exclusive_hold_exits_75(lock_dir: str) -> None:
    inner = [*CROSSLOCK, "run", "--timeout", "0.1", "X", "--", "true"]
    result = cli(lock_dir, "run", "X", "--", *inner)
    assert result.returncode == 75


@pytest.mark.parametrize(
    ("option", "value"),
    [
        (["--timeout", "-1"], "-1"),
        (["--timeout=-1"], "-1"),
        (["--timeout", "-0.5"], "-0.5"),
        (["--timeout", "nan"], "nan"),
        (["--timeout", "NaN"], "nan"),
        (["--timeout=nan"], "nan"),
        # argparse reads a separate "-inf" as an option: "--timeout=-inf" is the spelling
        (["--timeout=-inf"], "-inf"),
    ],
)
def test_run_bad_timeout_value(lock_dir: str, option: list[str], value: str) -> None:
    result = cli(lock_dir, "run", *option, "job", "--", "true", timeout=RUN_TIMEOUT)
    assert result.returncode not in (0, 75)
    assert "timeout" in result.stderr
    assert value in result.stderr.lower()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["abc", "", "1s"])
def test_run_timeout_not_a_number(lock_dir: str, value: str) -> None:
    result = cli(lock_dir, "run", "--timeout", value, "job", "--", "true")
    assert result.returncode == 2
    assert repr(value) in result.stderr
    assert "Traceback" not in result.stderr


def test_run_bad_timeout_does_not_hold_the_lock(lock_dir: str) -> None:
    lock = crosslock.Lock("job")
    assert lock.acquire(timeout=0)
    try:
        # A held lock must not turn a bad value into a wait.
        result = cli(lock_dir, "run", "--timeout", "-1", "job", "--", "true")
    finally:
        lock.release()
    assert result.returncode not in (0, 75)
    assert "-1" in result.stderr


@pytest.mark.parametrize("backend", ["nosuch", "ftp://host/x"])
def test_run_unknown_backend(lock_dir: str, backend: str) -> None:
    result = cli(lock_dir, "run", "--backend", backend, "job", "--", "true")
    assert result.returncode == 1
    assert "backend" in result.stderr
    assert backend.split(":")[0] in result.stderr
    assert "Traceback" not in result.stderr


def test_run_unknown_backend_from_environment(lock_dir: str) -> None:
    env = _env(lock_dir)
    env["CROSSLOCK_BACKEND"] = "nosuch"
    result = subprocess.run(
        [*CROSSLOCK, "run", "job", "--", "true"], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert result.returncode == 1
    assert "nosuch" in result.stderr


def test_run_missing_parent_folder(lock_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "job.lock"
    result = cli(lock_dir, "run", str(path), "--", "true")
    assert result.returncode == 1
    assert str(path.parent) in result.stderr
    assert not path.parent.exists()


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_run_bad_lock_name(lock_dir: str, name: str) -> None:
    result = cli(lock_dir, "run", name, "--", "true")
    assert result.returncode == 1
    assert "name" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_multiprocessing_backend(lock_dir: str) -> None:
    result = cli(lock_dir, "run", "--backend", "multiprocessing", "job", "--", PY, "-c", "print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


# -- status ---------------------------------------------------------------------------


def _row(output: str, name: str) -> list[str]:
    rows = [line.split() for line in output.splitlines()]
    found = [row for row in rows if row and row[0] == name]
    assert len(found) == 1, f"no single row for {name!r} in:\n{output}"
    return found[0]


def test_status_empty(lock_dir: str) -> None:
    result = cli(lock_dir, "status")
    assert result.returncode == 0, result.stderr
    assert lock_dir in result.stdout
    json_result = cli(lock_dir, "status", "--json")
    assert json_result.returncode == 0, json_result.stderr
    assert json.loads(json_result.stdout) == []


def test_status_shows_holder_of_crosslock_run(lock_dir: str, holders: list[Holder]) -> None:
    free = crosslock.Lock("idle")
    with free:
        pass
    holder = _start_holder(holders, lock_dir, "busy")
    host = socket.gethostname()

    result = cli(lock_dir, "status")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "STATE", "PID", "HOST"]
    busy = _row(result.stdout, "busy")
    assert busy[1] == "held"
    assert busy[2] == str(holder.pid)
    assert busy[3] == host
    idle = _row(result.stdout, "idle")
    assert idle[1] == "free"
    assert idle[2] == "-"

    named = cli(lock_dir, "status", "busy")
    assert named.returncode == 0, named.stderr
    assert _row(named.stdout, "busy")[1:4] == ["held", str(holder.pid), host]
    assert "idle" not in named.stdout

    as_json = cli(lock_dir, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows: list[dict[str, Any]] = json.loads(as_json.stdout)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"busy", "idle"}
    assert by_name["busy"]["state"] == "held"
    assert by_name["busy"]["pids"] == [holder.pid]
    assert by_name["busy"]["host"] == host
    assert isinstance(by_name["busy"]["since"], (int, float))
    assert by_name["busy"]["path"] == os.path.join(lock_dir, "busy.lock")
    assert by_name["idle"]["state"] == "free"
    assert by_name["idle"]["pids"] == []

    assert holder.finish() == 0
    after = cli(lock_dir, "status", "busy", "--json")
    assert after.returncode == 0, after.stderr
    [row] = json.loads(after.stdout)
    assert row["state"] == "free"
    assert row["pids"] == []


def test_status_shows_shared_holders(lock_dir: str, holders: list[Holder]) -> None:
    first = _start_holder(holders, lock_dir, "readers", "--shared")
    second = _start_holder(holders, lock_dir, "readers", "--shared", "--timeout", "5")
    result = cli(lock_dir, "status", "--json", "readers")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["state"].startswith("held")
    assert "shared" in row["state"]
    assert sorted(row["pids"]) == sorted([first.pid, second.pid])
    assert first.finish() == 0
    assert second.finish() == 0


def test_status_of_lock_held_in_another_process(lock_dir: str) -> None:
    lock = crosslock.Lock("mine")
    assert lock.acquire(timeout=0)
    try:
        result = cli(lock_dir, "status", "--json", "mine")
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["state"] == "held"
    assert row["pids"] == [os.getpid()]


def test_status_named_lock_by_path_and_missing(lock_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.lock"
    with crosslock.Lock(path):
        pass
    result = cli(lock_dir, "status", "--json", str(path), "never-created")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["state"] for row in rows] == ["free", "missing"]
    assert rows[0]["path"] == str(path)
    assert rows[1]["name"] == "never-created"


# -- demo -----------------------------------------------------------------------------


def test_demo(lock_dir: str) -> None:
    result = cli(lock_dir, "demo", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "with crosslock.Lock" in result.stdout
    assert "without a lock" in result.stdout
    assert "serialized" in result.stdout
    assert "INTERLEAVED" not in result.stdout
    for worker in (1, 2, 3):
        assert result.stdout.count(f"worker {worker} start") == 2
        assert result.stdout.count(f"worker {worker} end") == 2


def test_run_options_may_follow_the_name(lock_dir: str) -> None:
    holder = crosslock.Lock("late-opts")
    with holder:
        result = cli(lock_dir, "run", "late-opts", "--timeout", "0", "--", PY, "-c", "print('ran')")
    assert result.returncode == 75, result.stderr
    assert "ran" not in result.stdout
    result = cli(lock_dir, "run", "late-opts", "--timeout", "1", "--", PY, "-c", "print('ran')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
