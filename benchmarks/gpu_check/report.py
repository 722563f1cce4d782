"""The GPU check's report: ``gpu_check.json`` and ``gpu_check.md``, rewritten after every part.

Every part is listed from the start (``pending``), so a report left behind by a killed run
still says which parts never ran. Finished parts end ``ok``, ``failed`` or ``skipped``;
``fields`` holds what a part measured, and an item that needs CUDA reads
``"skipped: no CUDA"`` on a CPU run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dist_seg import atomic

FINAL_STATUSES = ("ok", "failed", "skipped")
JSON_NAME = "gpu_check.json"
MARKDOWN_NAME = "gpu_check.md"
FORMAT = "dist_seg.gpu_check"
VERSION = 1


@dataclass
class PartReport:
    """What one part did."""

    name: str
    title: str
    status: str = "pending"  # pending | running | ok | failed | skipped
    budget_s: float | None = None
    planned_s: float | None = None  # the plan's estimate, beside what it took
    seconds: float | None = None
    summary: str = ""  # one line for the table
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None  # the last lines of the traceback or of the failing command's output


@dataclass
class Report:
    """The whole check."""

    mode: str  # "cuda" or "cpu-smoke"
    budget_s: float
    command: list[str]
    parts: list[PartReport]
    packages: dict[str, str]  # importable module -> version, or "missing"
    plan: dict[str, Any] = field(default_factory=dict)  # this run's plan (plan.Plan.to_json)
    gpu_plan: dict[str, Any] | None = None  # --cpu-smoke: the GPU check's plan and whether it fits
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    elapsed_s: float = 0.0
    finished: bool = False

    def part(self, name: str) -> PartReport:
        return next(p for p in self.parts if p.name == name)

    def device_name(self) -> str:
        """The GPU's name once the env part has read it, else what is known."""
        fields = self.part("env").fields if any(p.name == "env" for p in self.parts) else {}
        gpu = fields.get("gpu_name")
        if isinstance(gpu, str) and not gpu.startswith("skipped"):
            return gpu
        return fields.get("cpu", "unknown (env part did not run)")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "mode": self.mode, "device": self.device_name(),
                "budget_s": self.budget_s, "elapsed_s": round(self.elapsed_s, 1), "finished": self.finished,
                "started": self.started, "command": self.command, "packages": self.packages,
                "plan": self.plan, "gpu_plan": self.gpu_plan, "parts": {p.name: asdict(p) for p in self.parts}}

    def write(self, out_dir: Path) -> None:
        """Rewrite both files atomically: a reader, or a kill, never sees half a report."""
        atomic.write_json(out_dir / JSON_NAME, self.to_json())
        atomic.write_text(out_dir / MARKDOWN_NAME, render_markdown(self))


def render_markdown(report: Report) -> str:
    """The report as a page: a table of parts, then each part's fields and errors."""
    state = "finished" if report.finished else "INCOMPLETE (still running, or killed)"
    lines = [
        "# dist_seg GPU check",
        "",
        f"- device: **{report.device_name()}** ({report.mode})",
        f"- started {report.started}, {report.elapsed_s:.0f} s of a {report.budget_s:.0f} s budget, {state}",
        f"- command: `{' '.join(report.command)}`",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in report.packages.items()),
    ]
    if report.gpu_plan is not None:
        fits = "fits" if report.gpu_plan["fits"] else "DOES NOT FIT: " + "; ".join(report.gpu_plan["problems"])
        lines.append(f"- the GPU check's plan: ~{report.gpu_plan['required_s']:.0f} s of "
                     f"{report.gpu_plan['budget_s']:.0f} s, {fits}")
    lines += [
        "",
        "| part | status | seconds | planned s | budget s | summary |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for p in report.parts:
        lines.append(f"| {p.name}: {p.title} | {p.status} | {_num(p.seconds)} | {_num(p.planned_s)} | "
                     f"{_num(p.budget_s)} | {p.summary.replace('|', '/')} |")
    for p in report.parts:
        lines += ["", f"## {p.name}: {p.title} ({p.status})", ""]
        if p.error:
            lines += [f"**error:** {p.error}", ""]
        lines += [f"- {key}: {_value(value)}" for key, value in _flatten(p.fields)]
        if p.traceback:
            lines += ["", "```", p.traceback.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:
        return json.dumps(value[:8])[:-1] + f", ... ({len(value)} in all)]"
    if isinstance(value, str) and "\n" in value:
        return "\n  ```\n  " + value.replace("\n", "\n  ") + "\n  ```"
    return json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)


def _flatten(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    flat = []
    for key, value in fields.items():
        if isinstance(value, dict) and value:
            flat += _flatten(value, f"{prefix}{key}.")
        else:
            flat.append((f"{prefix}{key}", value))
    return flat
