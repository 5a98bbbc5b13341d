"""crosslock.print and crosslock.open."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import crosslock

from . import workers
from .conftest import WAIT, Procs

# -- crosslock.print ------------------------------------------------------------------

PRINT_CASES: list[tuple[tuple[object, ...], dict[str, Any]]] = [
    ((), {}),
    (("a",), {}),
    (("a", 1, None, [2, 3], 4.5), {}),
    (("a", "b", "c"), {"sep": "-"}),
    (("a", "b", "c"), {"sep": ""}),
    (("a", "b", "c"), {"sep": None}),
    (("a", "b"), {"end": ""}),
    (("a", "b"), {"end": "!\n"}),
    (("a", "b"), {"end": None}),
    (("a", "b"), {"sep": None, "end": None}),
    (("multi\nline", "x"), {"sep": "\n", "end": "\n\n"}),
    (("ünïcødé", "✓"), {"sep": " | "}),
    (("a", "b"), {"flush": False}),
]


@pytest.mark.parametrize(("objects", "kwargs"), PRINT_CASES)
def test_print_matches_builtin_on_stringio(objects: tuple[object, ...], kwargs: dict[str, Any]) -> None:
    expected, got = io.StringIO(), io.StringIO()
    print(*objects, file=expected, **kwargs)
    crosslock.print(*objects, file=got, **kwargs)
    assert got.getvalue() == expected.getvalue()


@pytest.mark.parametrize(("objects", "kwargs"), PRINT_CASES)
def test_print_matches_builtin_on_real_file(
    objects: tuple[object, ...], kwargs: dict[str, Any], tmp_path: Path
) -> None:
    expected_path, got_path = tmp_path / "expected.txt", tmp_path / "got.txt"
    with open(expected_path, "w", encoding="utf-8") as f:
        print(*objects, file=f, **kwargs)
    with open(got_path, "w", encoding="utf-8") as f:
        crosslock.print(*objects, file=f, **kwargs)
    assert got_path.read_text(encoding="utf-8") == expected_path.read_text(encoding="utf-8")


def test_print_default_file_is_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    crosslock.print("hello", 42, sep=", ")
    crosslock.print("second", file=None, end="|")
    out, err = capsys.readouterr()
    assert out == "hello, 42\nsecond|"
    assert err == ""


def test_print_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    crosslock.print("oops", file=sys.stderr)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "oops\n")


def test_print_flushes_by_default(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as f:
        crosslock.print("visible before close", file=f, end="")
        # flush=True (the default) pushed it to the file while it is still open
        assert path.read_text(encoding="utf-8") == "visible before close"


def test_print_without_stdout_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    crosslock.print("dropped")  # like print(): no stream, no output, no error


def test_print_to_closed_file_is_value_error(tmp_path: Path) -> None:
    f = open(tmp_path / "out.txt", "w")  # noqa: SIM115 - closed on purpose
    f.close()
    with pytest.raises(ValueError, match="closed"):
        print("x", file=f)  # the built-in agrees
    with pytest.raises(ValueError, match="closed"):
        crosslock.print("x", file=f)


@pytest.mark.parametrize("sep", [1, b" ", ["-"], 0.5])
def test_print_non_str_sep_is_type_error(sep: Any) -> None:
    with pytest.raises(TypeError):
        print("a", "b", sep=sep, file=io.StringIO())  # the built-in agrees
    out = io.StringIO()
    with pytest.raises(TypeError):
        crosslock.print("a", "b", sep=sep, file=out)
    assert out.getvalue() == ""


@pytest.mark.parametrize("end", [1, b"\n"])
def test_print_non_str_end_is_type_error(end: Any) -> None:
    out = io.StringIO()
    with pytest.raises(TypeError):
        crosslock.print("a", end=end, file=out)
    assert out.getvalue() == ""


def _check_whole_lines(data: str, tags: list[str], lines: int, width: int) -> None:
    got = data.split("\n")
    assert got[-1] == "", "output does not end with a newline"
    got = got[:-1]
    counts: Counter[str] = Counter()
    for number, line in enumerate(got):
        tag = line[:1]
        assert tag in tags, f"line {number} starts with no worker's tag: {line[:30]!r}"
        assert line == tag * width, (
            f"line {number} is not whole: length {len(line)}, starts {line[:30]!r}, "
            f"characters {sorted(set(line))}"
        )
        counts[tag] += 1
    assert counts == {tag: lines for tag in tags}


WORKERS = 3
LINES = 200
WIDTH = 20 * 1024  # far larger than PIPE_BUF (4096 on Linux)
TAGS = ["A", "B", "C", "D"][:WORKERS]


@pytest.mark.parametrize("how", ["file", "stdout"])
def test_print_processes_to_one_file_lines_whole(
    mp_context: Any, procs: Procs, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "shared.txt"
    out.touch()
    barrier = mp_context.Barrier(WORKERS)
    for tag in TAGS:
        procs.start(mp_context, workers.print_long_lines_to, str(out), how, tag, LINES, WIDTH, barrier)
    assert procs.join_all() == [0] * WORKERS
    _check_whole_lines(out.read_text(encoding="utf-8"), TAGS, LINES, WIDTH)


@pytest.mark.parametrize("how", ["file", "stdout"])
def test_print_processes_to_one_pipe_lines_whole(
    mp_context: Any, procs: Procs, tmp_path: Path, how: str
) -> None:
    fifo = tmp_path / "shared.fifo"
    os.mkfifo(fifo)
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(read_fd, True)
    # Our own write end keeps the reader from seeing EOF before the workers open theirs.
    keep_fd = os.open(fifo, os.O_WRONLY)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        barrier = mp_context.Barrier(WORKERS + 1)
        for tag in TAGS:
            procs.start(mp_context, workers.print_long_lines_to, str(fifo), how, tag, LINES, WIDTH, barrier)
        barrier.wait(WAIT)  # every worker has opened the pipe for writing
    finally:
        os.close(keep_fd)
    try:
        assert procs.join_all() == [0] * WORKERS
        reader.join(WAIT)
        assert not reader.is_alive()
    finally:
        procs.cleanup()
        reader.join(WAIT)
        os.close(read_fd)
    _check_whole_lines(b"".join(chunks).decode("utf-8"), TAGS, LINES, WIDTH)


class _ChoppyStream(io.StringIO):
    """A descriptor-less text stream whose write() lands in small pieces, yielding between them."""

    def write(self, s: str) -> int:
        for i in range(0, len(s), 64):
            super().write(s[i : i + 64])
            os.sched_yield()
        return len(s)


@pytest.mark.parametrize("stream_type", [io.StringIO, _ChoppyStream])
def test_print_threads_to_one_stringio_lines_whole(stream_type: type[io.StringIO]) -> None:
    threads_n, lines, width = 6, 100, 1000
    tags = [chr(ord("a") + i) for i in range(threads_n)]
    stream = stream_type()
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(tag: str) -> None:
        try:
            barrier.wait(WAIT)
            for _ in range(lines):
                crosslock.print(tag * (width // 2), tag * (width // 2 - 1), sep=tag, file=stream)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    _check_whole_lines(stream.getvalue(), tags, lines, width)


# -- crosslock.open --------------------------------------------------------------------


def _hold_in_thread(path: Path | str, mode: str) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """Hold ``crosslock.open(path, mode)`` in a helper thread until the returned release event is set."""
    acquired, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with crosslock.open(path, mode, timeout=WAIT):
                acquired.set()
                release.wait(WAIT)
        except BaseException as exc:
            errors.append(exc)
            acquired.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert acquired.wait(WAIT)
    assert errors == []
    return thread, acquired, release


def _finish(thread: threading.Thread, release: threading.Event) -> None:
    release.set()
    thread.join(WAIT)
    assert not thread.is_alive()


@pytest.mark.parametrize("writer_mode", ["w", "w+", "wb"])
@pytest.mark.parametrize("holder_mode", ["a", "r", "r+"])
def test_open_w_timeout_does_not_truncate_while_thread_holds(
    tmp_path: Path, writer_mode: str, holder_mode: str
) -> None:
    path = tmp_path / "data.txt"
    path.write_text("original contents\n")
    thread, _, release = _hold_in_thread(path, holder_mode)
    try:
        with pytest.raises(crosslock.Timeout), crosslock.open(path, writer_mode, timeout=0.2):
            pytest.fail("crosslock.open(..., 'w') entered while another holder held the file")
        assert path.read_text() == "original contents\n"
        with pytest.raises(crosslock.Timeout), crosslock.open(path, writer_mode, timeout=0):
            pytest.fail("crosslock.open(..., 'w', timeout=0) entered while another holder held the file")
        assert path.read_text() == "original contents\n"
    finally:
        _finish(thread, release)
    with crosslock.open(path, "w", timeout=WAIT) as f:
        f.write("new")
    assert path.read_text() == "new"


@pytest.mark.parametrize("holder_mode", ["a", "r"])
def test_open_w_timeout_does_not_truncate_while_process_holds(
    mp_context: Any, procs: Procs, tmp_path: Path, holder_mode: str
) -> None:
    path = tmp_path / "data.txt"
    path.write_text("kept\n")
    acquired, release = mp_context.Event(), mp_context.Event()
    procs.start(mp_context, workers.hold_open, str(path), holder_mode, acquired, release)
    try:
        assert acquired.wait(WAIT)
        with pytest.raises(crosslock.Timeout) as info, crosslock.open(path, "w", timeout=0.2):
            pytest.fail("crosslock.open(..., 'w') entered while another process held the file")
        assert str(path) in str(info.value)
        assert path.read_text() == "kept\n"
    finally:
        release.set()
    assert procs.join_all() == [0]
    assert path.read_text() == "kept\n"
    with crosslock.open(path, "w", timeout=WAIT) as f:
        f.write("replaced")
    assert path.read_text() == "replaced"


def test_open_waiting_writer_truncates_only_after_holder_leaves(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("first\n")
    writer_done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with crosslock.open(path, "w", timeout=WAIT) as f:
                f.write("writer\n")
        except BaseException as exc:
            errors.append(exc)
        writer_done.set()

    with crosslock.open(path, "a") as held:
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        held.write("second\n")
        held.flush()
        # The writer cannot have entered (and so truncated) while we hold the file.
        assert not writer_done.is_set()
        assert path.read_text() == "first\nsecond\n"
    assert writer_done.wait(WAIT)
    thread.join(WAIT)
    assert errors == []
    assert path.read_text() == "writer\n"


@pytest.mark.parametrize("mode", ["r", "rb", "rt"])
def test_open_readers_share(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text("shared text")
    a_inside, b_done = threading.Event(), threading.Event()
    a_saw_b: list[bool] = []
    errors: list[BaseException] = []

    def reader_a() -> None:
        try:
            with crosslock.open(path, mode, timeout=WAIT) as f:
                f.read()
                a_inside.set()
                a_saw_b.append(b_done.wait(WAIT))
        except BaseException as exc:
            errors.append(exc)
            a_inside.set()

    thread = threading.Thread(target=reader_a, daemon=True)
    thread.start()
    try:
        assert a_inside.wait(WAIT)
        assert errors == []
        # Thread A is inside its block: a second reader gets in at once.
        with crosslock.open(path, mode, timeout=0) as f:
            data = f.read()
            assert thread.is_alive()
        assert data in ("shared text", b"shared text")
    finally:
        b_done.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert a_saw_b == [True]


@pytest.mark.parametrize("holder_mode", ["a", "w", "r+", "ab"])
@pytest.mark.parametrize("reader_mode", ["r", "rb"])
def test_open_reader_excluded_while_writer_holds(tmp_path: Path, holder_mode: str, reader_mode: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x")
    thread, _, release = _hold_in_thread(path, holder_mode)
    try:
        with pytest.raises(crosslock.Timeout), crosslock.open(path, reader_mode, timeout=0.2):
            pytest.fail("a reader entered while a writer held the file")
        with pytest.raises(crosslock.Timeout), crosslock.open(path, reader_mode, timeout=0):
            pytest.fail("a reader entered while a writer held the file")
    finally:
        _finish(thread, release)
    with crosslock.open(path, reader_mode, timeout=WAIT):
        pass


@pytest.mark.parametrize("writer_mode", ["a", "r+", "ab", "a+"])
def test_open_writer_excluded_while_reader_holds(tmp_path: Path, writer_mode: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x")
    thread, _, release = _hold_in_thread(path, "r")
    try:
        with pytest.raises(crosslock.Timeout), crosslock.open(path, writer_mode, timeout=0.2):
            pytest.fail("a writer entered while a reader held the file")
    finally:
        _finish(thread, release)
    assert path.read_text() == "x"


def test_open_reader_excluded_while_other_process_writes(
    mp_context: Any, procs: Procs, tmp_path: Path
) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x")
    acquired, release = mp_context.Event(), mp_context.Event()
    procs.start(mp_context, workers.hold_open, str(path), "a", acquired, release)
    try:
        assert acquired.wait(WAIT)
        with pytest.raises(crosslock.Timeout), crosslock.open(path, "r", timeout=0.2):
            pytest.fail("a reader entered while another process held the file")
    finally:
        release.set()
    assert procs.join_all() == [0]


def test_open_w_data_flushed_and_visible_after_block(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with crosslock.open(path, "w") as f:
        f.write("hello")
    assert path.read_text() == "hello"
    with crosslock.open(str(path), "a") as f:
        f.write(" world")
    assert path.read_text() == "hello world"
    with crosslock.open(path, "w") as f:
        f.write("short")
    assert path.read_text() == "short"  # truncated, not overwritten in place
    with crosslock.open(path) as f:
        assert f.read() == "short"


def test_open_data_flushed_before_lock_released(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("")
    payload = "y" * 5000 + "\n"
    wrote, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with crosslock.open(path, "a", timeout=WAIT) as f:
                f.write(payload)  # buffered: the flush happens at the end of the block
                wrote.set()
                go.wait(WAIT)
        except BaseException as exc:
            errors.append(exc)
            wrote.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert wrote.wait(WAIT)
        go.set()
        # Waits for the writer's release; by then its data must be in the file.
        with crosslock.open(path, "r", timeout=WAIT) as f:
            seen = f.read()
    finally:
        go.set()
        thread.join(WAIT)
    assert errors == []
    assert seen == payload


def test_open_binary_modes(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    blob = bytes(range(256)) * 4
    with crosslock.open(path, "wb") as f:
        assert isinstance(f, io.BufferedIOBase)
        f.write(blob)
    assert path.read_bytes() == blob
    with crosslock.open(path, "ab") as f:
        f.write(b"\r\n")
    with crosslock.open(path, "rb") as f:
        data = f.read()
    assert isinstance(data, bytes)
    assert data == blob + b"\r\n"
    with crosslock.open(path, "r+b") as f:
        f.write(b"XY")
    assert path.read_bytes()[:3] == b"XY\x02"


def test_open_text_modes_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with crosslock.open(path, "w+", encoding="utf-8") as f:
        f.write("line one\nline two\n")
        f.seek(0)
        assert f.read() == "line one\nline two\n"
    with crosslock.open(path, "r+", encoding="utf-8") as f:
        assert f.readline() == "line one\n"
    with crosslock.open(path, "a+", encoding="utf-8") as f:
        f.write("three\n")
    assert path.read_text(encoding="utf-8") == "line one\nline two\nthree\n"


def test_open_x_mode(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    with crosslock.open(path, "x") as f:
        f.write("created")
    assert path.read_text() == "created"
    with pytest.raises(FileExistsError), crosslock.open(path, "x"):
        pytest.fail("'x' opened an existing file")
    assert path.read_text() == "created"


def test_open_creates_missing_file_for_writing(tmp_path: Path) -> None:
    for mode in ("w", "a"):
        path = tmp_path / f"new-{mode}.txt"
        with crosslock.open(path, mode) as f:
            f.write(mode)
        assert path.read_text() == mode


@pytest.mark.parametrize("mode", ["", "z", "rw", "rr", "rbt", "wa", "r+w", "U", "br+x", "ww"])
def test_open_bad_mode_is_value_error(tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "data.txt"
    path.write_text("kept")
    with pytest.raises(ValueError, match="mode"), crosslock.open(path, mode):
        pytest.fail(f"mode {mode!r} was accepted")
    assert path.read_text() == "kept"
    with pytest.raises(ValueError, match="mode"), crosslock.open(folder / "new.txt", mode):
        pytest.fail(f"mode {mode!r} was accepted")
    assert sorted(p.name for p in folder.iterdir()) == ["data.txt"]


@pytest.mark.parametrize("mode", ["r", "rb", "r+"])
def test_open_missing_file_for_reading(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError), crosslock.open(path, mode):
        pytest.fail("opened a missing file for reading")
    assert not path.exists()


def test_open_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "data.txt"
    with pytest.raises(FileNotFoundError), crosslock.open(path, "w"):
        pytest.fail("opened a file in a missing folder")
    assert not path.parent.exists()


def test_open_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError), crosslock.open(tmp_path, "r"):
        pytest.fail("opened a directory")
    with pytest.raises(IsADirectoryError), crosslock.open(tmp_path, "w"):
        pytest.fail("opened a directory")


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (-0.5, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
@pytest.mark.parametrize("mode", ["w", "r"])
def test_open_bad_timeout(tmp_path: Path, timeout: Any, error: type[Exception], mode: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text("kept")
    with pytest.raises(error, match="timeout"), crosslock.open(path, mode, timeout=timeout):
        pytest.fail(f"timeout {timeout!r} was accepted")
    assert path.read_text() == "kept"
    fresh = tmp_path / "fresh.txt"
    with pytest.raises(error), crosslock.open(fresh, "w", timeout=timeout):
        pytest.fail(f"timeout {timeout!r} was accepted")
    assert not fresh.exists()


def test_open_good_timeouts(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    for timeout in (None, 0, 0.0, 1, 2.5, math.inf):
        with crosslock.open(path, "a", timeout=timeout) as f:
            f.write("x")
    assert path.read_text() == "x" * 6


def test_open_encoding_passes_through(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with crosslock.open(path, "w", encoding="utf-16") as f:
        f.write("héllo ✓")
    assert path.read_bytes() == "héllo ✓".encode("utf-16")
    with crosslock.open(path, "r", encoding="utf-16") as f:
        assert f.read() == "héllo ✓"
    with crosslock.open(path, "r", encoding="ascii", errors="replace") as f:
        assert "\ufffd" in f.read()


def test_open_newline_passes_through(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    with crosslock.open(path, "w", newline="\r\n") as f:
        f.write("a\nb\n")
    assert path.read_bytes() == b"a\r\nb\r\n"
    with crosslock.open(path, "r", newline="") as f:
        assert f.read() == "a\r\nb\r\n"
    with crosslock.open(path, "r") as f:
        assert f.read() == "a\nb\n"


def test_open_unknown_keyword_is_type_error(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("kept")
    with pytest.raises(TypeError), crosslock.open(path, "w", no_such_option=1):
        pytest.fail("an unknown keyword was accepted")


def test_open_releases_on_exception(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"

    class Boom(Exception):
        pass

    def fail_inside() -> None:
        with crosslock.open(path, "w") as f:
            f.write("partial")
            raise Boom

    with pytest.raises(Boom):
        fail_inside()
    assert path.read_text() == "partial"
    with crosslock.open(path, "w", timeout=0) as f:  # free again
        f.write("after")
    assert path.read_text() == "after"


_SYMLINK_SCRIPT = textwrap.dedent(
    """
    import sys
    import crosslock

    link = sys.argv[1]
    with crosslock.open(link, "r", timeout=5) as f:
        print("read:" + f.read(), flush=True)
    with crosslock.open(link, "a", timeout=5) as f:
        f.write("+appended")
    with crosslock.open(link, "w", timeout=5) as f:
        f.write("rewritten")
    print("done", flush=True)
    """
)


def test_open_follows_users_symlink(tmp_path: Path) -> None:
    """Unlike a lock file, crosslock.open opens the user's own path as open() does, symlink or not."""
    target = tmp_path / "real.txt"
    target.write_text("real data")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    # In a child with a time limit: a hang must fail this test, not the session.
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SYMLINK_SCRIPT, str(link)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"crosslock.open on a symlink did not finish: {exc}; output so far: {exc.stdout!r}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "read:real data\ndone\n"
    assert link.is_symlink()
    assert target.read_text() == "rewritten"


def test_open_timeout_never_truncates_then_lock_frees(tmp_path: Path) -> None:
    """Repeated timed-out 'w' opens leave the data alone and do not keep the file locked."""
    path = tmp_path / "data.txt"
    path.write_text("precious")
    thread, _, release = _hold_in_thread(path, "a")
    try:
        for _ in range(5):
            with pytest.raises(crosslock.Timeout), crosslock.open(path, "w", timeout=0.05):
                pytest.fail("entered while held")
            assert path.read_text() == "precious"
    finally:
        _finish(thread, release)
    with crosslock.open(path, "r", timeout=WAIT) as f:
        assert f.read() == "precious"
    with crosslock.open(path, "w", timeout=WAIT) as f:
        f.write("done")
    assert path.read_text() == "done"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "z"}, ValueError),
        ({"mode": "w", "timeout": -1}, ValueError),
        ({"mode": "w", "timeout": "1"}, TypeError),
    ],
)
def test_open_bad_arguments_fail_at_the_call(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Bad input is reported by the call itself, before any ``with`` and without touching the file."""
    path = tmp_path / "data.txt"
    path.write_text("kept")
    with pytest.raises(error):
        crosslock.open(path, **kwargs)
    assert path.read_text() == "kept"
