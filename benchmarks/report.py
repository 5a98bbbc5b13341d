"""Markdown, JSON and a PNG chart from the result tables."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model import Column, Goal, Row, Section, Table
from .subjects import BASELINE, FLOOR, ROUND_TRIP

#: for ratios ("2.4x" with a true multiplication sign) and ranges
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"

__all__ = ["chart", "fmt_ratio", "fmt_time", "markdown", "section_json", "to_json", "write"]


def _sig(value: float) -> str:
    """Three significant digits, no exponent."""
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    rounded = round(value, digits)  # 0.9997 rounds to 1.00: three digits of *that*
    digits = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{digits}f}"


def fmt_time(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale * 0.9995:  # 999.7 ns reads "1.00 µs", not "1000 ns"
            return f"{_sig(ns / scale)} {unit}"
    return f"{_sig(ns)} ns"


def fmt_rate(per_s: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if per_s >= scale * 0.9995:
            return f"{_sig(per_s / scale)} {unit}/s"
    return f"{_sig(per_s)}/s"


def fmt_ratio(ratio: float) -> str:
    if ratio >= 9.95:
        return f"{ratio:,.0f}{TIMES}"
    if ratio >= 0.995:
        return f"{ratio:.1f}{TIMES}"
    if ratio <= 0:
        return f"0{TIMES}"
    # Two significant digits, never an exponent (0.0999 rounds to 0.10).
    rounded = round(ratio, 1 - math.floor(math.log10(ratio)))
    return f"{rounded:.{1 - math.floor(math.log10(rounded))}f}{TIMES}"


def _fmt(kind: str, value: float) -> str:
    if kind in ("time", "timespan"):
        return fmt_time(value)
    if kind == "rate":
        return fmt_rate(value)
    if kind == "ms":
        return f"{value:.1f} ms"
    if kind == "kib":
        return f"{value / 1024:+.1f} MiB" if abs(value) >= 1024 else f"{value:+,.0f} KiB"
    return f"{value:,.0f}"


def _cell(table: Table, row: Row, column: Column) -> str:
    values = row.values
    key = column.key
    if column.kind in ("span", "timespan", "arrow"):
        low, high = ("_before", "_after") if column.kind == "arrow" else ("_min", "_max")
        if key + low not in values or key + high not in values:
            return "—"
        sep = " → " if column.kind == "arrow" else f" {DASH} "
        return _fmt(column.kind, values[key + low]) + sep + _fmt(column.kind, values[key + high])
    if key not in values:
        return "—"
    text = _fmt(column.kind, values[key])
    ratio = table.ratio(row, column)
    return f"{text} ({fmt_ratio(ratio)})" if ratio is not None else text


def _table_md(table: Table, level: int = 2) -> list[str]:
    lines = [f"{'#' * level} {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| subject | " + " | ".join(c.header for c in table.columns) + " |")
    lines.append("| --- |" + " ---: |" * len(table.columns))
    notes = []
    for row in table.rows:
        name = f"**{row.subject}**" if row.subject == table.baseline_subject else row.subject
        if row.measured:
            cells = [_cell(table, row, c) for c in table.columns]
            if row.status != "ok":
                name += f" **{row.status}**"
        else:
            first = f"skipped ({row.detail})" if row.status == "skipped" and row.detail else row.status
            cells = [first] + ["—"] * (len(table.columns) - 1)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if row.detail and row.status != "skipped":
            detail = [line for line in row.detail.strip().splitlines() if line.strip()]
            notes.append(f"- {row.subject}: {detail[-1].strip() if detail else row.status}")
    if notes:
        lines += ["", *notes]
    lines.append("")
    return lines


def _short_version(text: str) -> str:
    """``7.0.15`` from redis-server's and ``15.18`` from postgres's ``--version``."""
    match = re.search(r"v=(\S+)", text) or re.search(r"\)\s+(\S+)", text)
    return match.group(1) if match else text


def _goal_md(goal: Goal, floors: bool = False) -> str:
    bound = f"{goal.kind} {goal.bound:g}{TIMES}"
    ratio = goal.ratio
    top, bottom = goal.numerator, goal.denominator
    floor = ""
    if floors:
        floor = f" {_sig(goal.floor)}{TIMES} |" if goal.floor is not None else " — |"
    if ratio is None:
        missing = [what for what, value in (top, bottom) if not value]
        return f"| {goal.text} | not measured ({bound}) |{floor} no figure for {', '.join(missing)} | — |"
    figures = f"{top[0]} {_fmt(goal.unit, top[1] or 0)} / {bottom[0]} {_fmt(goal.unit, bottom[1] or 0)}"
    met = "**yes**" if goal.met else "**NO**"
    return f"| {goal.text} | {_sig(ratio)}{TIMES} ({bound}) |{floor} {figures} | {met} |"


def _section_intro(section: Section) -> str:
    extra = section.extra
    servers = extra.get("servers", {})
    redis, postgres = servers.get("redis", {}), servers.get("postgres", {})

    def state(server: dict[str, Any], name: str, what: str) -> str:
        if server.get("status") == "ok":
            return f"{name} {_short_version(server.get('version', ''))} ({what})"
        return f"no {name}: {server.get('detail') or server.get('status')}"

    text = (
        "Servers started by the suite for this run on loopback, each in a temporary folder: "
        f"{state(redis, 'redis-server', 'no persistence')}, "
        f"{state(postgres, 'PostgreSQL', 'fsync off')}. "
        f"Ratios ({TIMES}) in this section are subject / **{ROUND_TRIP}** measured in the same run"
    )
    trips = extra.get("round_trips", {})
    rtt = trips.get("redis")
    if rtt:
        text += (
            f": redis-py's `ping()` on one connection, median of {rtt['count']:,.0f}: "
            f"{fmt_time(rtt['median_ns'])} (p99 {fmt_time(rtt['p99_ns'])})."
        )
    else:
        text += " (not measured in this run: no ratios)."
    records = []
    flock = extra.get("raw_flock_handoff", {})
    if "median_ns" in flock:
        record = (
            f"{BASELINE}'s hand-off median {fmt_time(flock['median_ns'])}, p99 {fmt_time(flock['p99_ns'])}"
        )
        if rtt:
            record += f" ({fmt_ratio(flock['median_ns'] / rtt['median_ns'])} {ROUND_TRIP})"
        records.append(record)
    pg = trips.get("postgres")
    if pg:
        records.append(
            f"one PostgreSQL round trip (`SELECT 1`, psycopg, one connection) median "
            f"{fmt_time(pg['median_ns'])}, p99 {fmt_time(pg['p99_ns'])}"
        )
    if records:
        text += " For the record, in the same run: " + "; ".join(records) + "."
    return text


def _section_md(section: Section) -> list[str]:
    lines = [f"## {section.title}", "", _section_intro(section), ""]
    if section.goals:
        lines += [
            "### Targets",
            "",
            "| target | ratio (bound) | figures (hand-off medians) | met |",
            "| --- | ---: | --- | :---: |",
            *[_goal_md(goal) for goal in section.goals],
            "",
        ]
    for table in section.tables:
        lines += _table_md(table, level=3)
    return lines


def targets_md(goals: Sequence[Goal]) -> list[str]:
    """The section that holds this run's figures to the targets (none: no section)."""
    if not goals:
        return []
    met = sum(1 for g in goals if g.met)
    judged = sum(1 for g in goals if g.met is not None)
    floors = any(g.floor is not None for g in goals)
    text = (
        f"The figures of this run against crosslock's performance targets: {met} of {judged} met. "
        f"A ratio compares two figures of this run (crosslock over {BASELINE}, or a peer over "
        "crosslock); hand-off figures on a shared machine vary from run to run."
    )
    header = ["| target | ratio (bound) | figures | met |", "| --- | ---: | --- | :---: |"]
    if floors:
        text += (
            f" *{FLOOR}*: the same ratio for the least a lock written in Python can do that keeps "
            "crosslock's checks of the lock file (flock, and one zero-timeout epoll_wait on an "
            "inotify watch after each grant and before each release, in a minimal class without "
            "timeout): a bound below it is out of reach for Python code with those checks."
        )
        header = [
            f"| target | ratio (bound) | {FLOOR} | figures | met |",
            "| --- | ---: | ---: | --- | :---: |",
        ]
    return ["## Targets", "", text, "", *header, *[_goal_md(goal, floors) for goal in goals], ""]


def goals_json(goals: Sequence[Goal]) -> list[dict[str, Any]]:
    return [
        {
            "key": g.key,
            "text": g.text,
            "ratio": g.ratio,
            "ratio_of": f"{g.numerator[0]} / {g.denominator[0]}",
            "numerator": g.numerator[1],
            "denominator": g.denominator[1],
            "unit": g.unit,
            "bound": f"{g.kind} {g.bound:g}",
            "met": g.met,
            "floor_ratio": g.floor,
        }
        for g in goals
    ]


def markdown(
    tables: Sequence[Table],
    facts: dict[str, Any],
    packages: dict[str, str | None],
    mode: str,
    wall_s: float,
    failures: Sequence[str],
    problems: Sequence[str],
    section: Section | None = None,
    goals: Sequence[Goal] = (),
) -> str:
    installed = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    missing = [k for k, v in packages.items() if not v]
    lines = [
        "# crosslock benchmarks",
        "",
        f"{mode} run of {facts['date']}, {wall_s:.0f} s: {facts['cpu']} ({facts['cores']} cores), "
        f"Python {facts['python']}, Linux {facts['kernel']}; {installed}"
        + (f"; not installed: {', '.join(missing)}" if missing else "")
        + f"; crosslock's C module: {facts.get('crosslock_c_module', 'unknown')}.",
        "",
        f"Ratios ({TIMES}) are subject / **{BASELINE}** measured in the same run: above 1{TIMES} "
        f"a time is longer, below 1{TIMES} a rate is lower."
        + (f" In *{section.title}*: subject / **{ROUND_TRIP}**." if section else ""),
        "",
    ]
    lines += targets_md(goals)
    for table in tables:
        lines += _table_md(table)
    if section:
        lines += _section_md(section)
    if failures or problems:
        lines += ["## Problems", ""]
        lines += [f"- **FAILED** {f}" for f in failures]
        lines += [f"- {p}" for p in problems]
        lines.append("")
    return "\n".join(lines)


def _row_json(table: Table, row: Row) -> dict[str, Any]:
    ratios = {}
    for column in table.columns:
        ratio = table.ratio(row, column)
        if ratio is not None:
            ratios[column.key] = ratio
    data: dict[str, Any] = {"subject": row.subject, "status": row.status}
    if row.detail:
        data["detail"] = row.detail
    data.update(row.values)
    if ratios:
        data["ratio"] = ratios
    data.update(row.extra)
    return data


def _table_json(table: Table) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": table.title,
        "note": table.note,
        "columns": [{"key": c.key, "header": c.header, "kind": c.kind} for c in table.columns],
        "rows": [_row_json(table, r) for r in table.rows],
    }
    if table.baseline_subject != BASELINE:
        data["baseline"] = table.baseline_subject
    return data


def to_json(tables: Sequence[Table], **top: Any) -> dict[str, Any]:
    measurements = {t.key: _table_json(t) for t in tables}
    return {**top, "baseline": BASELINE, "measurements": measurements}


def section_json(section: Section) -> dict[str, Any]:
    """The JSON of a :class:`Section`: its facts, goals and tables."""
    return {
        "title": section.title,
        "baseline": section.tables[0].baseline_subject if section.tables else None,
        "note": _section_intro(section),
        **section.extra,
        "targets": goals_json(section.goals),
        "measurements": {t.key: _table_json(t) for t in section.tables},
    }


def chart(tables: Sequence[Table], path: Path) -> bool:
    """Bar charts of uncontended time and hand-off median per subject (log scale,
    ratio labels); ``False`` when matplotlib is missing or there is nothing to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(t, key) for t in tables for key in ("ns_per_pair", "median_ns") if t.columns[0].key == key]
    panels = [(t, key) for t, key in panels if any(r.measured for r in t.rows)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    for ax, (table, key) in zip(axes[0], panels, strict=True):
        rows = [r for r in table.rows if r.measured and key in r.values]
        values = [r.values[key] / 1e3 for r in rows]
        colors = [
            "#444444"
            if r.subject == table.baseline_subject
            else "#1f77b4"
            if r.subject.startswith("crosslock")
            else "#bbbbbb"
            for r in rows
        ]
        positions = range(len(rows))
        ax.barh(positions, values, color=colors)
        ax.set_yticks(list(positions), [r.subject for r in rows])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("µs (log scale)")
        if table.baseline_subject != BASELINE:
            ax.set_title(f"Server backends: hand-off median\n(ratio: subject / {table.baseline_subject})")
        else:
            ax.set_title(table.title if key == "ns_per_pair" else "Hand-off latency, median")
        for y, row, value in zip(positions, rows, values, strict=True):
            ratio = table.ratio(row, table.columns[0])
            label = fmt_time(value * 1e3) + (f"  ({fmt_ratio(ratio)})" if ratio is not None else "")
            ax.text(value * 1.08, y, label, va="center", fontsize=8)
        ax.set_xlim(min(values) / 2, max(values) * 40)
        ax.grid(axis="x", which="major", alpha=0.3)
    if all(t.baseline_subject == BASELINE for t, _ in panels):
        fig.suptitle(f"crosslock vs raw flock and peers (ratio: subject / {BASELINE})")
    else:
        fig.suptitle("crosslock vs its baselines and peers (ratio: subject / the panel's dark bar)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(
    out: Path, text: str, data: dict[str, Any], tables: Sequence[Table], section: Section | None = None
) -> list[Path]:
    """Write latest.md, latest.json and (matplotlib permitting) latest.png into
    ``out``; the chart shows ``section``'s first table (its hand-off) too."""
    if section is not None:
        tables = [*tables, *section.tables[:1]]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "latest.md", out / "latest.json"]
    written[0].write_text(text, encoding="utf-8")
    written[1].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    png = out / "latest.png"
    if chart(tables, png):
        written.append(png)
    else:
        png.unlink(missing_ok=True)  # never leave an older run's chart beside these results
    return written
