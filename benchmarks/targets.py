"""crosslock's performance targets, held against the figures of one run.

Each target is a ratio of two figures measured in the same run -- crosslock
over raw flock, or a peer over crosslock -- against a bound. A target whose
figures this run did not measure (a ``--measure`` or ``--subject`` left them
out) is not listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Goal, Table
from .subjects import BASELINE, FLOOR

__all__ = ["local_goals"]

FILE, TIMED, MP = "crosslock file", "crosslock file timeout", "crosslock multiprocessing"

#: (key, text, table, column, numerator subject, denominator subject, kind, bound, unit)
_RATIOS: tuple[tuple[str, str, str, str, str, str, str, float, str], ...] = (
    ("uncontended_file", "file backend: uncontended acquire + release", "uncontended", "ns_per_pair",
     FILE, BASELINE, "at most", 3.0, "time"),
    ("handoff_median", "file backend: hand-off median, no timeout", "handoff", "median_ns",
     FILE, BASELINE, "at most", 1.5, "time"),
    ("handoff_p99", "file backend: hand-off p99, no timeout", "handoff", "p99_ns",
     FILE, BASELINE, "at most", 2.0, "time"),
    ("handoff_timed", "file backend: hand-off median with a timeout", "handoff", "median_ns",
     TIMED, BASELINE, "at most", 2.0, "time"),
    ("waiter_cpu", "file backend: CPU a waiter burns per hand-off", "handoff", "cpu_ns_per_handoff",
     FILE, BASELINE, "at most", 1.5, "time"),
    ("throughput_p2", "file backend: throughput, 2 processes", "throughput_p2", "sections_per_s",
     FILE, BASELINE, "at least", 0.7, "rate"),
    ("throughput_p4", "file backend: throughput, 4 processes", "throughput_p4", "sections_per_s",
     FILE, BASELINE, "at least", 0.7, "rate"),
    ("uncontended_mp", "multiprocessing backend: uncontended acquire + release", "uncontended",
     "ns_per_pair", MP, BASELINE, "at most", 0.5, "time"),
    ("handoff_vs_filelock", "file backend: hand-off median, times faster than filelock's", "handoff",
     "median_ns", "filelock", FILE, "at least", 50.0, "time"),
    ("throughput_vs_filelock_p2", "file backend: throughput, 2 processes, over filelock's",
     "throughput_p2", "sections_per_s", FILE, "filelock", "at least", 10.0, "rate"),
    ("throughput_vs_filelock_p4", "file backend: throughput, 4 processes, over filelock's",
     "throughput_p4", "sections_per_s", FILE, "filelock", "at least", 10.0, "rate"),
    ("import", "`import crosslock` no slower than `import filelock`", "imports", "net_ms",
     "crosslock", "filelock", "at most", 1.0, "ms"),
)  # fmt: skip

#: A process taking and releasing many distinct named locks: (key, text, value, limit, unit).
_MEMORY = (
    ("memory_fds", "descriptors left open (fewer than 300)", "fds_after", 300.0, "count"),
    ("memory_rss", "process growth (less than 10 MB)", "rss_growth_kib", 10_000_000 / 1024, "kib"),
)


def _value(tables: dict[str, Table], table: str, subject: str, column: str) -> float | None:
    found = tables.get(table)
    if found is None:
        return None
    for row in found.rows:
        if row.subject == subject and row.measured:
            return row.values.get(column)
    return None


def local_goals(tables: Sequence[Table]) -> list[Goal]:
    """The targets this run measured, with its figures."""
    by_key = {t.key: t for t in tables}
    goals = []
    for key, text, table, column, top, bottom, kind, bound, unit in _RATIOS:
        numerator = _value(by_key, table, top, column)
        denominator = _value(by_key, table, bottom, column)
        if numerator is None and denominator is None:
            continue
        floor = None
        if top in (FILE, TIMED) and bottom == BASELINE:
            # What the least Python lock with crosslock's file checks reaches (no timeout).
            least = _value(by_key, table, FLOOR, column)
            floor = least / denominator if least and denominator else None
        goals.append(Goal(key, text, (top, numerator), (bottom, denominator), kind, bound, unit, floor))
    locks = _value(by_key, "memory", FILE, "locks")
    if locks is not None:
        for key, text, column, limit, unit in _MEMORY:
            value = _value(by_key, "memory", FILE, column)
            goals.append(
                Goal(
                    key,
                    f"file backend, {locks:,.0f} distinct named locks: {text}",
                    (FILE, value),
                    ("the limit", limit),
                    "at most",
                    1.0,
                    unit,
                )
            )
    return goals
