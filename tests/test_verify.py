"""``crosslock verify``: the exclusion check users run on their own folders."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import crosslock
from crosslock import _verify


def test_verify_passes_on_a_local_folder(tmp_path: Any) -> None:
    verdict = _verify.verify(str(tmp_path), processes=3, holds=40)
    assert verdict.ok
    assert (verdict.overlaps, verdict.counter) == (0, 120)
    assert "verdict: OK" in verdict.report()
    assert not list(tmp_path.glob(".crosslock-verify-*"))  # its scratch folder is gone


def test_overlap_is_detected_and_reported(tmp_path: Any) -> None:
    # A marker already present is what an overlapping holder looks like.
    (tmp_path / "inside").write_text("")
    (tmp_path / "counter").write_text("0")

    class Box:
        def __init__(self) -> None:
            self.items: list[int] = []

        def put(self, item: int) -> None:
            self.items.append(item)

    class Go:
        def wait(self, timeout: float) -> bool:
            return True

    box = Box()
    lock = crosslock.Lock(tmp_path / "x.lock")
    _verify._worker(lock, str(tmp_path / "counter"), str(tmp_path / "inside"), 5, Go(), box)
    assert box.items == [5]
    verdict = _verify.Verdict(str(tmp_path), "ext4", 1, 5, 5, 5, 0.1, [])
    assert not verdict.ok
    assert "NOT SAFE" in verdict.report()
    assert not _verify.Verdict(str(tmp_path), "nfs", 2, 5, 0, 9, 0.1, []).ok  # a lost update


def test_verify_command(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crosslock", "verify", str(tmp_path), "--processes", "2", "--holds", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "verdict: OK" in out.stdout
    assert "2 processes x 20 holds" in out.stdout


@pytest.mark.parametrize("args", [["/nonexistent/folder"], ["--processes", "0"]])
def test_verify_bad_input(tmp_path: Any, args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crosslock", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "error" in out.stderr
