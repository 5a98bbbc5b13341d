"""Build script for crosslock's optional C speed-ups (the metadata is in pyproject.toml).

``crosslock._speedups`` pairs the file backend's hot system calls on Linux.
It is optional: where it cannot be built (no compiler, another system),
crosslock installs and runs in pure Python.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(Extension("crosslock._speedups", ["src/crosslock/_speedups.c"], optional=True))

setup(ext_modules=extensions)
