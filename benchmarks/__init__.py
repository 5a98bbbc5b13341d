"""crosslock's benchmark suite: crosslock against raw flock and its peers.

Run ``python -m benchmarks`` (or ``python benchmarks/run.py``) from the
repository root; ``--quick`` for a short run. See ``benchmarks/README.md``.
"""
