"""Small order statistics (the standard library's need a float conversion per item)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["median", "percentile"]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of the already *sorted* ``ordered``."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])
