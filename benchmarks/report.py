"""The results as JSON, a console table and a markdown summary."""

from __future__ import annotations

import json
import re
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


# Derived values in words, with their units: "1.27x the speed of a plain copy", not vs_plain_copy_floor=1.27.
# Keys not listed (the step suite's phase times, in ms) keep ``key=value``.
PLAIN_WORDS: dict[str, str] = {
    "vs_plain_copy_floor": "{}x the speed of a plain memory copy of the same bytes",
    "vs_decode_same_workers": "{}x the speed of PNG decoding with as many workers",
    "per_core_samples_per_s": "{} samples/s per loader worker (or core)",
    "at_least_20x_decode": "at least 20x decoding: {}",
    "within_2x_of_floor": "at least half the plain-copy speed: {}",
    "speedup_vs_eager_fp32": "{}x the speed of eager fp32",
    "speedup_vs_cache_off": "{}x the speed without the cache",
    "speedup_vs_1_thread": "{}x the speed with 1 thread",
    "scaling_efficiency": "scaling efficiency {} (1 = linear in ranks)",
    "global_images_per_s": "{} images/s over all ranks",
    "step_time_vs_off": "{}x the step time without the sampler",
    "overhead_percent": "{} % overhead",
    "fraction_of_matmul_peak": "{} of the matmul peak",
    "achieved_tflop_s": "{} TFLOP/s achieved",
    "gflop_per_image": "{} GFLOP per image",
    "first_step_s": "first step {} s",
    "warmup_s": "warm-up {} s",
    "compile_s": "compilation {} s",
    "data_wait_frac_median": "waiting for data {} of the time",
    "cache_growth_mb": "cache {} MB larger",
}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _number(value) if isinstance(value, float) else str(value)


def _derived(record: Record) -> str:
    parts = []
    for key, value in record.derived.items():
        words = PLAIN_WORDS.get(key)
        if words is None and key.endswith("_growth_mb"):
            words = key.removesuffix("_growth_mb").replace("_", " ") + " {} MB larger"
        parts.append(words.format(_value(value)) if words else f"{key}={_value(value)}")
    return ", ".join(parts)


def resolution(record: Record) -> str:
    """The input size ``HxW`` the record measured (from its settings), or ``-`` where none applies."""
    size = record.settings.get("image_size")
    if size:
        return f"{size[0]}x{size[1]}"
    found = re.search(r"\b(\d+x\d+)\b", str(record.settings.get("model", "")))
    return found.group(1) if found else "-"


def rows(records: list[Record]) -> list[list[str]]:
    """Suite, variant, input size, median with unit, min-max with unit, derived values: one row per record."""
    return [[r.suite, r.variant, resolution(r), f"{_number(r.stats.median)} {r.unit}",
             f"{_number(r.stats.min)} - {_number(r.stats.max)} {r.unit}", str(len(r.stats.values)), _derived(r)]
            for r in records]


HEADER = ["suite", "variant", "input HxW", "median", "min - max", "n", "derived (same run)"]


def console_table(records: list[Record]) -> str:
    table = [HEADER] + rows(records)
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER) - 1)]
    lines = []
    for row in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
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

