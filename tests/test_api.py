"""The public surface: exports, error tree, import cost, repr."""

from __future__ import annotations

import subprocess
import sys

import crosslock


def test_all_is_complete_and_sorted() -> None:
    public = {name for name in vars(crosslock) if not name.startswith("_")}
    public -= {"annotations"}
    assert sorted(crosslock.__all__) == crosslock.__all__
    assert set(crosslock.__all__) == public


def test_error_tree() -> None:
    assert issubclass(crosslock.Timeout, crosslock.LockError)
    assert issubclass(crosslock.Timeout, TimeoutError)
    assert issubclass(crosslock.NotHeldError, RuntimeError)
    assert issubclass(crosslock.NotHeldError, crosslock.LockError)
    for cls in (crosslock.AbandonedLockError, crosslock.LockLost, crosslock.BackendUnavailable):
        assert issubclass(cls, crosslock.LockError)


def test_import_does_not_import_optional_packages() -> None:
    code = (
        "import sys, crosslock; "
        "bad = [m for m in ('filelock', 'redis', 'psycopg', 'multiprocessing.synchronize', 'asyncio') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_repr_and_properties() -> None:
    lock = crosslock.Lock("shown", timeout=2.5)
    assert "shown.lock" in repr(lock)
    assert "not held" in repr(lock)
    assert lock.timeout == 2.5
    assert lock.backend == "file"
    assert lock.shared is False
    with lock:
        assert "held" in repr(lock)


def test_synchronized_default_name_and_bare_use() -> None:
    calls: list[bool] = []

    @crosslock.synchronized()
    def first() -> None:
        calls.append(True)

    @crosslock.synchronized
    def second() -> int:
        return 2

    first()
    assert second() == 2
    assert calls == [True]
    assert first.__name__ == "first"
