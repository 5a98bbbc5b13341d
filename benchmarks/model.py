"""Result tables: rows of figures per subject, columns that say how to show them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .subjects import BASELINE

__all__ = ["ERROR", "FAILED", "OK", "SKIPPED", "TIMED_OUT", "Column", "Goal", "Row", "Section", "Table"]

OK = "ok"
SKIPPED = "skipped"
TIMED_OUT = "timed out"
ERROR = "error"
#: measured, but wrong: lost updates
FAILED = "FAILED"


@dataclass(frozen=True)
class Column:
    """One figure of a table.

    ``kind`` says how to show it: ``time`` (nanoseconds), ``rate`` (per
    second), ``ms``, ``count``, ``kib``; ``span`` shows ``key_min`` and
    ``key_max``, ``timespan`` the same for times, ``arrow`` shows
    ``key_before`` -> ``key_after``.
    """

    key: str
    header: str
    kind: str
    ratio: bool = False


@dataclass
class Row:
    subject: str
    status: str = OK
    detail: str = ""
    values: dict[str, float] = field(default_factory=dict)
    #: raw data kept for the JSON only (per-repetition times, per-process counts)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status in (OK, FAILED)


@dataclass
class Table:
    key: str
    title: str
    columns: tuple[Column, ...]
    rows: list[Row] = field(default_factory=list)
    note: str = ""
    #: the row every ratio in this table is over (raw flock but in the server tables)
    baseline_subject: str = BASELINE

    def baseline(self) -> Row | None:
        for row in self.rows:
            if row.subject == self.baseline_subject and row.measured:
                return row
        return None

    def ratio(self, row: Row, column: Column) -> float | None:
        """``row``'s figure over the baseline's in this table, where that makes sense."""
        base = self.baseline()
        if not column.ratio or base is None or not row.measured:
            return None
        value, reference = row.values.get(column.key), base.values.get(column.key)
        if value is None or not reference:
            return None
        return value / reference

    def row(self, subject: str) -> Row:
        for row in self.rows:
            if row.subject == subject:
                return row
        raise KeyError(subject)


@dataclass
class Goal:
    """A target the figures are held to: ``numerator / denominator`` against ``bound``."""

    key: str
    text: str
    #: (what, nanoseconds; ``None``: not measured)
    numerator: tuple[str, float | None]
    denominator: tuple[str, float | None]
    #: "at most" or "at least"
    kind: str
    bound: float
    #: how the figures read (a :class:`Column` kind: ``time``, ``rate``, ``ms``, ``count``, ``kib``)
    unit: str = "time"
    #: the same ratio for the Python floor subject, when this run measured it
    floor: float | None = None

    @property
    def ratio(self) -> float | None:
        top, bottom = self.numerator[1], self.denominator[1]
        if top is None or not bottom:
            return None
        return top / bottom

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if ratio is None:
            return None
        return ratio <= self.bound if self.kind == "at most" else ratio >= self.bound


@dataclass
class Section:
    """A report section of its own: tables with their own baseline, and goals."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    #: facts for the JSON (the servers, the round trips)
    extra: dict[str, Any] = field(default_factory=dict)
