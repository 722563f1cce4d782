"""Run the throughput benchmarks: ``python benchmarks/run.py [--quick | --tiny] [--out DIR] [--suite NAME ...]``.

Without ``--quick`` the sizes are meant for a GPU machine (production model, more repeats); ``--quick`` uses
small sizes and no compile variants for a CPU; ``--tiny`` only checks that every suite works (seconds). At the
start each suite's expected time is printed: how long it took in the last run of the same preset into the same
``--out``. Results go to ``OUT/results.json`` (one record per measurement) and ``OUT/summary.md``; the table
is printed as well. The synthetic dataset and its caches are generated once into ``--scratch`` and reused by
later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

# Run as a script, this file's folder is on sys.path, not the repository root that holds the package.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.common import Machine, Record  # noqa: E402
from benchmarks.context import Context  # noqa: E402
from benchmarks.sizes import PRESETS, PROMISES  # noqa: E402
from benchmarks.suites import DEFAULT_SUITES, SUITES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="preset",
                      help="small sizes, no compile variants: about a minute or two per suite on an idle 2-core "
                           "CPU")
    size.add_argument("--tiny", action="store_const", const="tiny", dest="preset",
                      help="smallest sizes, for tests: checks that the suites run, numbers mean little")
    parser.set_defaults(preset="full")
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(DEFAULT_SUITES), metavar="NAME",
                        help=f"suites to run: {', '.join(SUITES)} (default: all but time_to_accuracy)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out",
                        help="folder for results.json, summary.md and the runs' outputs (default: benchmarks/out)")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="folder for the generated dataset and caches, reused between runs (default: OUT/scratch)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="real footage in DAVID layout for the time_to_accuracy suite "
                             "(default: ../shared/data/camvid_dev beside the repository)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to measure (default: cuda if available, else cpu)")
    return parser.parse_args(argv)


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used, CPU seconds of this process and its finished children).

    Their difference over a suite is the CPU time other jobs took meanwhile: interference
    that the load average (which also counts this run) cannot separate. Linux only.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    own = os.times()
    return ((user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge whether other work disturbed the run."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def previous_seconds(results: Path, preset: str) -> dict[str, float]:
    """Each suite's wall time in the last run of ``preset`` that wrote ``results`` (empty if none)."""
    try:
        meta = json.loads(results.read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return {}
    if meta.get("preset") != preset:
        return {}
    return {name: load["seconds"] for name, load in meta.get("suite_load", {}).items() if "seconds" in load}


def expected(seconds: float | None) -> str:
    """``expected ~2 min (last run here)``, or that there is no earlier run to go by."""
    if seconds is None:
        return "expected time unknown: no earlier run of this preset here"
    return f"expected ~{seconds / 60:.1f} min (the last run of this preset here)"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suites, write the results after each, return 1 if any suite failed."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = (args.scratch or out / "scratch").resolve()
    machine = Machine.detect(device)
    ctx = Context(PRESETS[args.preset], device, machine, scratch, out / "runs", log=lambda m: print(m, flush=True),
                  footage_root=args.data_root)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    meta = {"preset": args.preset, "command": command.strip(), "suites": args.suite, "machine": asdict(machine),
            "load_before": load_average(), "suite_load": {}, "failures": []}
    titles = {name: SUITES[name].TITLE for name in args.suite}
    print(f"{machine.device} ({machine.cores} cores), torch {machine.torch}, preset {args.preset}, "
          f"load {meta['load_before']}", flush=True)
    print(f"preset {args.preset}: {PROMISES[args.preset]}", flush=True)
    before = previous_seconds(out / "results.json", args.preset)
    if all(name in before for name in args.suite):
        print(f"suites {', '.join(args.suite)}: {expected(sum(before[n] for n in args.suite))}", flush=True)
    records: list[Record] = []
    start = time.perf_counter()
    for name in args.suite:
        suite_start = time.perf_counter()
        load_before, cpu_before = load_average(), cpu_seconds()
        print(f"[{name}] {SUITES[name].TITLE}; {expected(before.get(name))}", flush=True)
        try:
            records += SUITES[name].run(ctx)
        except Exception as exc:  # one broken suite must not lose the others' results
            traceback.print_exc()
            meta["failures"].append({"suite": name, "error": f"{type(exc).__name__}: {exc}"})
        seconds = time.perf_counter() - suite_start
        print(f"[{name}] {seconds:.0f} s", flush=True)
        # This run's own processes count in the load too: up to one per busy core.
        meta["suite_load"][name] = {"before": load_before, "after": load_average(), "seconds": round(seconds, 1)}
        cpu_after = cpu_seconds()
        if cpu_before is not None and cpu_after is not None:
            other = (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1])
            meta["suite_load"][name]["other_processes_cpu_s"] = round(max(other, 0.0), 1)
        meta.update(seconds=time.perf_counter() - start, load_after=load_average())
        report.write(out, records, meta, titles)
    print(report.console_table(records))
    print(f"\nwrote {out / 'results.json'} and {out / 'summary.md'} ({meta['seconds']:.0f} s)")
    return 1 if meta["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
