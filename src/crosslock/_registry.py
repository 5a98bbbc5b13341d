"""Backend selection: a name or URL scheme maps to a lazily imported module.

Nothing optional is imported by ``import crosslock``; a backend's module is
imported the first time a Lock asks for it, and a missing optional package
becomes :class:`~crosslock.BackendUnavailable` with the install command.
"""

from __future__ import annotations

import importlib
import os

from ._backends._base import Target

__all__ = ["BACKENDS", "SCHEMES", "backend_spec", "target_class"]

#: backend name -> (module, Target class)
BACKENDS: dict[str, tuple[str, str]] = {
    "file": ("crosslock._backends._file", "FileTarget"),
    "filelock": ("crosslock._backends._filelock", "FilelockTarget"),
    "multiprocessing": ("crosslock._backends._mp", "MPTarget"),
}

#: URL scheme -> (module, Target class)
SCHEMES: dict[str, tuple[str, str]] = {
    "redis": ("crosslock._backends._redis", "RedisTarget"),
    "rediss": ("crosslock._backends._redis", "RedisTarget"),
    "postgresql": ("crosslock._backends._postgres", "PostgresTarget"),
    "postgres": ("crosslock._backends._postgres", "PostgresTarget"),
}

_CHOICES = "'file', 'filelock', 'multiprocessing', or a redis:// or postgresql:// URL"


def backend_spec(backend: object) -> str:
    """The backend asked for: the argument, else ``$CROSSLOCK_BACKEND``, else ``"file"``."""
    if backend is None:
        backend = os.environ.get("CROSSLOCK_BACKEND") or "file"
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str (a name or URL), got {backend!r}")
    return backend


def target_class(spec: str) -> type[Target]:
    """Import and return the Target class for a backend name or URL."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown lock backend URL scheme {scheme!r} in {spec!r}; use {_CHOICES}")
        module, cls = SCHEMES[scheme]
    elif spec in BACKENDS:
        module, cls = BACKENDS[spec]
    else:
        raise ValueError(f"unknown lock backend {spec!r}; use {_CHOICES}")
    mod = importlib.import_module(module)  # optional packages: checked by the module
    found: type[Target] = getattr(mod, cls)
    return found
