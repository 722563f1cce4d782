"""The results as JSON, a console table and a markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dist_seg import atomic

from .common import Record


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _derived(record: Record) -> str:
    parts = []
    for key, value in record.derived.items():
        parts.append(f"{key}={_number(value) if isinstance(value, float) else value}")
    return ", ".join(parts)


def rows(records: list[Record]) -> list[list[str]]:
    """Suite, variant, median with unit, min-max, derived values: one row per record."""
    return [[r.suite, r.variant, f"{_number(r.stats.median)} {r.unit}",
             f"{_number(r.stats.min)} - {_number(r.stats.max)}", str(len(r.stats.values)), _derived(r)]
            for r in records]


HEADER = ["suite", "variant", "median", "min - max", "n", "derived (same run)"]


def console_table(records: list[Record]) -> str:
    table = [HEADER] + rows(records)
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = []
    for row in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


def markdown(records: list[Record], meta: dict[str, Any], titles: dict[str, str]) -> str:
    """One table per suite, with the machine and the command on top."""
    lines = [f"# Benchmark results ({meta['preset']})", "",
             f"- command: `{meta['command']}`",
             (f"- device: {meta['machine']['device']} ({meta['machine']['cores']} usable cores), "
              f"torch {meta['machine']['torch']}, Python {meta['machine']['python']}"),
             f"- load average before / after: {meta['load_before']} / {meta.get('load_after', 'n/a')}",
             f"- wall time: {meta.get('seconds', 0):.0f} s", ""]
    for failure in meta.get("failures", []):
        lines.append(f"- **suite {failure['suite']} failed**: {failure['error']}")
    for suite in dict.fromkeys(r.suite for r in records):
        lines += ["", f"## {suite}: {titles.get(suite, '')}", ""]
        load = meta.get("suite_load", {}).get(suite)
        if load:
            other = load.get("other_processes_cpu_s")
            lines += [f"{load['seconds']:.0f} s; load average before {load['before']}, after {load['after']}"
                      + ("" if other is None else f"; CPU time of other processes meanwhile: {other:.1f} s"), ""]
        lines += ["| " + " | ".join(HEADER[1:]) + " |", "|" + "---|" * (len(HEADER) - 1)]
        lines += ["| " + " | ".join(row[1:]) + " |" for row in rows([r for r in records if r.suite == suite])]
    return "\n".join(lines) + "\n"


def write(out: Path, records: list[Record], meta: dict[str, Any], titles: dict[str, str]) -> None:
    """``results.json`` (meta + one object per record) and ``summary.md`` in ``out``, atomically."""
    payload = {"meta": meta, "records": [r.to_json() for r in records]}
    atomic.write_text(out / "results.json", json.dumps(payload, indent=1) + "\n")
    atomic.write_text(out / "summary.md", markdown(records, meta, titles))

