"""Smoke test of the benchmark suite (benchmarks/): its shortest run completes
and writes its reports. No timing assertions: the figures depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


def test_runs_as_a_script() -> None:
    done = _run("benchmarks/run.py", "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
