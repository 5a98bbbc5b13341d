"""Where lock files live: the default lock directory and name-to-path rules."""

from __future__ import annotations

import os
import stat
import sys

__all__ = ["LOCK_SUFFIX", "default_dir", "is_bare_name", "lock_path"]

#: A bare name ``"jobs"`` becomes ``<default dir>/jobs.lock``.
LOCK_SUFFIX = ".lock"

_checked: dict[str, str] = {}


def _candidate_dir() -> tuple[str, bool]:
    """The default directory and whether crosslock may create and own it."""
    # Folders above the lock directory are resolved, so that one lock file has
    # one spelling (and one registry key) in a process.
    explicit = os.environ.get("CROSSLOCK_DIR")
    if explicit:
        return os.path.realpath(explicit), False
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(os.path.realpath(runtime), "crosslock"), True
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    import tempfile

    return os.path.join(os.path.realpath(tempfile.gettempdir()), f"crosslock-{uid}"), True


def default_dir() -> str:
    """Return the default lock directory, creating it when it is missing.

    ``$CROSSLOCK_DIR`` wins when set (it is created if missing, its parent must
    exist). Otherwise a per-user folder ``crosslock`` under
    ``$XDG_RUNTIME_DIR``, or ``crosslock-<uid>`` in the system temp dir. The
    per-user folder must be a real directory (not a symlink) owned by the
    user; loose permissions are tightened to 0700.

    Raises:
        PermissionError: the per-user folder is a symlink, not a directory, or
            owned by another user.
        FileNotFoundError: the parent of ``$CROSSLOCK_DIR`` does not exist.
    """
    path, private = _candidate_dir()
    if _checked.get(path) == path and os.path.isdir(path):
        return path
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise FileNotFoundError(
            f"cannot create lock directory {path!r}: its parent folder does not exist; "
            "create it or point CROSSLOCK_DIR elsewhere"
        ) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise PermissionError(
            f"refusing lock directory {path!r}: it is {kind}; remove it or set CROSSLOCK_DIR "
            "to a folder of your own"
        )
    if private and sys.platform != "win32":
        if st.st_uid != os.getuid():
            raise PermissionError(
                f"refusing lock directory {path!r}: it is owned by uid {st.st_uid}, not by you "
                f"(uid {os.getuid()}); remove it or set CROSSLOCK_DIR to a folder of your own"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
    _checked[path] = path
    return path


def is_bare_name(name: str) -> bool:
    """Whether ``name`` names a lock in the default directory (no separator)."""
    return os.sep not in name and (os.altsep is None or os.altsep not in name)


def check_bare_name(name: str) -> None:
    if not name or name in (".", "..") or "\0" in name:
        raise ValueError(f"lock name must be a non-empty file name, got {name!r}")


def lock_path(name: object) -> str:
    """Return the absolute lock-file path for a bare name or a path.

    The parent folder is resolved (symlinks in it followed) so that every
    spelling of one file gives one registry key; the last component is kept
    as is, since crosslock never follows a symlink there.
    """
    if isinstance(name, str) and is_bare_name(name):
        check_bare_name(name)
        return os.path.join(default_dir(), name + LOCK_SUFFIX)
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"lock name must be a str or os.PathLike, got {name!r}")
    raw = os.fspath(name)
    if not isinstance(raw, str):
        raise TypeError(f"lock path must be a text path, got {raw!r}")
    if "\0" in raw:
        raise ValueError(f"lock path must not contain NUL bytes, got {raw!r}")
    full = os.path.abspath(raw)
    parent, base = os.path.split(full)
    if not base:
        raise IsADirectoryError(f"lock path {raw!r} names a directory; name a file inside it")
    return os.path.join(os.path.realpath(parent), base)


def describe_kind(mode: int) -> str:
    """A few words for a file type that cannot be a lock file."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
