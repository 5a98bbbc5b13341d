"""Smoke test of the benchmark suite (benchmarks/): its shortest run completes
and writes its reports, with and without its server part. No timing
assertions: the figures depend on the machine."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the suite kills its measuring processes and exits
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(args)} took over {timeout:g} s\n{stderr}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_smoke_run_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = _run("-m", "benchmarks", "--quick", "--smoke", "--out", str(out), timeout=45)
    assert done.returncode == 0, done.stderr
    assert (out / "latest.md").read_text(encoding="utf-8").strip() == done.stdout.strip()
    data = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    rows = {row["subject"]: row for row in data["measurements"]["uncontended"]["rows"]}
    for subject in ("raw flock", "crosslock file"):
        assert rows[subject]["status"] == "ok", rows[subject]
        assert rows[subject]["ns_per_pair"] > 0
    assert data["machine"]["cores"] >= 1
    assert data["packages"]["crosslock"]
    assert data["failures"] == []
    # The server part is opt-in: no server, no section.
    assert "server_backends" not in data
    assert "Server backends" not in done.stdout


def _need(tool: str, package: str) -> None:
    """Skip without ``tool`` locally; in CI (``CI=true``) its absence is a failure."""
    if shutil.which(tool) or glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"):
        return
    message = f"{tool} is not installed (Debian package {package})"
    if IN_CI:
        pytest.fail(f"{message}, and CI must run the server benchmarks", pytrace=False)
    pytest.skip(message)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.timeout(200)
def test_smoke_run_of_the_server_part(tmp_path: Path) -> None:
    _need("redis-server", "redis-server")
    _need("initdb", "postgresql")
    _need("pg_ctl", "postgresql")
    out = tmp_path / "results"
    done = _run("-m", "benchmarks", "--smoke", "--measure", "servers", "--out", str(out), timeout=170)
    assert done.returncode == 0, done.stderr
    assert (out / "latest.md").read_text(encoding="utf-8").strip() == done.stdout.strip()
    assert "## Server backends" in done.stdout
    assert "## Uncontended" not in done.stdout  # --measure servers: the server part only
    data = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    assert data["failures"] == []
    assert data["measurements"] == {}
    section = data["server_backends"]
    servers = section["servers"]
    assert servers["redis"]["status"] == "ok", servers
    assert servers["postgres"]["status"] == "ok", servers
    assert section["baseline"] == "one Redis round trip"
    assert section["round_trips"]["redis"]["median_ns"] > 0
    assert section["raw_flock_handoff"]["median_ns"] > 0
    handoff = {row["subject"]: row for row in section["measurements"]["servers_handoff"]["rows"]}
    for subject in ("one Redis round trip", "crosslock redis", "crosslock postgres", "redis-py Lock"):
        assert handoff[subject]["status"] == "ok", handoff[subject]
        assert handoff[subject]["median_ns"] > 0
    assert handoff["crosslock redis"]["ratio"]["median_ns"] > 0
    throughput = {row["subject"]: row for row in section["measurements"]["servers_throughput_p2"]["rows"]}
    for subject in ("crosslock redis", "crosslock postgres"):
        assert throughput[subject]["status"] == "ok", throughput[subject]
        assert throughput[subject]["counter"] == throughput[subject]["sections"] > 0
    targets = {t["key"]: t for t in section["targets"]}
    assert set(targets) == {"crosslock_redis_vs_round_trip", "crosslock_redis_vs_redis_py"}
    for target in targets.values():
        assert target["ratio"] > 0
        assert target["met"] in (True, False)
        assert target["text"] in done.stdout
    # The servers are gone once the suite is.
    assert _refused(servers["redis"]["port"])
    assert _refused(servers["postgres"]["port"])


def test_runs_as_a_script() -> None:
    done = _run("benchmarks/run.py", "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
