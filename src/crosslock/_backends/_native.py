"""The one place the platform is chosen: the OS's file-lock primitives."""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from . import _windows as native
else:
    from . import _posix as native

__all__ = ["native"]
