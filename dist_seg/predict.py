"""``python -m dist_seg.predict --checkpoint CKPT | --model model.onnx  INPUT... --out DIR``.

INPUT is an image, a folder of images (a sequence) or a dataset root with an ``Images/``
folder. For every frame it writes ``<stem>_ids.png`` (class ids), ``<stem>_color.png``
(palette colours) and ``<stem>_overlay.png`` (the frame with the colours blended in and a
legend of the classes found below it), mirroring the input's folder structure.

A frame that cannot be read is skipped and reported; the other frames are written and the
exit status is 1. Inputs whose outputs would collide, an --out that is a file or cannot be
written, and an --out that would put predictions among the input images are refused before
any work starts.
Progress is a bar on a terminal and a plain line every --log-every frames otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .cli_common import add_custom_model_argument, add_inference_arguments, inference_settings, run_cli
from .config import expand_user
from .data.discovery import IMAGE_SUFFIXES, list_files
from .errors import DataError
from .paths import check_outside_dataset, fit_name, is_inside, output_option

OUTPUT_SUFFIXES = ("_ids.png", "_color.png", "_overlay.png")
# Bytes the atomic writer adds to a name for its temporary file: ".<name>.<host>-<pid>.<8 random>.tmp".
TEMPORARY_NAME_BYTES = 64


@dataclass(frozen=True)
class PredictJob:
    """One input frame and where its outputs go (relative to --out)."""

    source: Path
    relative_dir: Path

    def output_stem(self, out_dir: Path) -> Path:
        """``<out_dir>/<relative_dir>/<stem>``; the output files add :data:`OUTPUT_SUFFIXES`.

        A stem so long that an output file's name (or its temporary name while written) would
        pass the filesystem's limit is shortened and tagged with a hash of the original.
        """
        longest = max(len(s.encode()) for s in OUTPUT_SUFFIXES)
        return out_dir / self.relative_dir / fit_name(self.source.stem, longest + TEMPORARY_NAME_BYTES)


def collect_inputs(inputs: Sequence[str], images_dir: str = "Images") -> list[PredictJob]:
    """Expand image files, sequence folders and dataset roots into frames, sorted and de-duplicated."""
    jobs: list[PredictJob] = []
    for item in inputs:
        path = expand_user(item, "input path")
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path} is not an image (.png/.jpg/.jpeg)")
            jobs.append(PredictJob(path, Path(".")))
        elif (path / images_dir).is_dir():
            for seq in sorted(p for p in (path / images_dir).iterdir() if p.is_dir()):
                jobs += [PredictJob(f, Path(seq.name)) for f in list_files(seq, IMAGE_SUFFIXES)]
        elif path.is_dir():
            found = list_files(path, IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path} holds no .png/.jpg images and no {images_dir}/ folder; "
                                "pass image files, a sequence folder or a dataset root")
            # The folder's own name, spelled out: "seq/.." or "." have no usable name of their own.
            jobs += [PredictJob(f, Path(Path(os.path.abspath(path)).name or "root")) for f in found]
        else:
            raise DataError(f"input {path} does not exist")
    # The same file named twice (a root and one of its sequences, ./x and x) is one job.
    unique = list({(job.source.resolve(), job.relative_dir): job for job in jobs}.values())
    if not unique:
        raise DataError("no input images found")
    return unique


def check_outputs(jobs: Sequence[PredictJob], out_dir: Path) -> None:
    """Refuse, before any work, an --out that cannot hold these jobs' outputs safely."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; pass a directory (it is created if missing)")
    for job in jobs:
        if not is_inside(job.output_stem(out_dir).parent, out_dir):  # a bug, not user input: never write outside
            raise DataError(f"the outputs of {job.source} would land outside --out {out_dir}")
    _check_clashes(jobs, out_dir)
    from .paths import check_writable_folder

    check_writable_folder(out_dir, "--out")
    # Sub-folders that exist already (a second run into the same --out) must be writable too.
    for folder in sorted({out_dir / job.relative_dir for job in jobs} - {out_dir}):
        if folder.exists():
            check_writable_folder(folder, f"--out (its sub-folder {folder.relative_to(out_dir)})")


def _check_clashes(jobs: Sequence[PredictJob], out_dir: Path) -> None:
    """Outputs of two inputs on one name, or outputs among the input images."""
    by_output: dict[Path, list[Path]] = defaultdict(list)
    for job in jobs:
        by_output[job.output_stem(out_dir)].append(job.source)
    clashes = {stem: sources for stem, sources in by_output.items() if len(sources) > 1}
    if clashes:
        shown = [f"{stem}{{{','.join(OUTPUT_SUFFIXES)}}} <- {', '.join(map(str, sources))}"
                 for stem, sources in list(clashes.items())[:5]]
        more = f"\n  ... and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise DataError(f"{len(clashes)} output name(s) would be written by more than one input "
                        "(same file stem in the same output folder):\n  " + "\n  ".join(shown) + more
                        + "\nrename the inputs, or predict them in separate runs with different --out")
    input_dirs = {job.source.parent.resolve() for job in jobs}
    for job in jobs:
        folder = (out_dir / job.relative_dir).resolve()
        if folder in input_dirs:
            raise DataError(f"--out {out_dir} would write predictions into {folder}, which holds input "
                            "images: a later run on that folder would predict the predictions. "
                            "Choose an --out outside the input folders")


class FrameProgress:
    """Frames done so far: a tqdm bar on a terminal, else a plain line every ``every`` frames.

    A bar written into a pipe or log file becomes carriage-return noise, and no output at
    all leaves a piped job silent for its whole run.
    """

    def __init__(self, total: int, every: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.every, self.stream = total, every, stream
        self.done = 0
        self._started = time.perf_counter()
        self._last_line = 0
        self._bar = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="predict", unit="frame", file=stream)

    def advance(self, frames: int) -> None:
        """Count ``frames`` more frames as done."""
        self.done += frames
        if self._bar is not None:
            self._bar.update(frames)
        elif self.done - self._last_line >= self.every or self.done == self.total:
            self._last_line = self.done
            elapsed = time.perf_counter() - self._started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(f"predict: {self.done}/{self.total} frames ({100 * self.done / self.total:.0f}%), "
                  f"{rate:.1f} frames/s, ETA {_duration(eta)}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """Print ``message`` without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar, if any."""
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a dist_seg checkpoint (e.g. outputs/x/best_model.pth)")
    source.add_argument("--model", help="an exported model.onnx (its model.json beside it); runs on ONNX Runtime")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, sequence folder or dataset root")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (auto: GPU when available)")
    parser.add_argument("--log-every", type=int, default=50, metavar="N",
                        help="when stderr is not a terminal, print a progress line every N frames (default 50)")
    add_inference_arguments(parser)
    add_custom_model_argument(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.log_every < 1:
        parser.error("--log-every must be >= 1")
    if args.model and args.custom_model:
        parser.error("--custom-model applies to --checkpoint only (an exported --model runs without Python code)")
    args.settings = inference_settings(parser, args)
    if args.model and not (args.settings.is_plain and args.settings.mode == "whole"):
        # Found now, not at the first batch after the model is loaded.
        parser.error("--tta and --mode slide need the PyTorch model: predict with --checkpoint, or drop them to "
                     "run the exported --model")
    if args.model and args.precision not in (None, "fp32"):
        parser.error("--precision: an exported --model runs in float32 on ONNX Runtime; predict with --checkpoint "
                     "to choose another precision")
    return args


def _main(argv: Sequence[str] | None) -> int:
    args = _parse_args(argv)
    args.out = output_option(args.out, "--out")
    jobs = collect_inputs(args.inputs)
    for item in args.inputs:
        root = expand_user(item, "input path")
        if (root / "Images").is_dir():  # a dataset root: the next run would take predictions there for frames
            check_outside_dataset(args.out, root, ("Images", "Labels"), "--out")
    check_outputs(jobs, args.out)

    from PIL import Image

    from . import atomic
    from .config import BackendConfig
    from .data.decode import load_image
    from .eval.inference import Predictor
    from .eval.visualize import overlay, with_legend
    from .runtime.device import describe_precision, inference_runtime
    from .runtime.distributed import select_device

    for folder in sorted({job.output_stem(args.out).parent for job in jobs}):
        atomic.remove_stale_temporaries(folder)  # what a killed earlier run into this --out left
    if args.model:
        from .deploy.onnx_predictor import OnnxPredictor

        predictor = OnnxPredictor.from_file(args.model, args.device)
        print("predict: precision fp32 (the exported model on ONNX Runtime)", flush=True)
    else:
        device = select_device(BackendConfig(target=args.device), local_rank=0, key="--device")
        runtime = inference_runtime(device, args.precision)
        predictor = Predictor.from_checkpoint(args.checkpoint, device, runtime, custom_model=args.custom_model)
        print(f"predict: {describe_precision(runtime, args.precision)}", flush=True)
    palette = predictor.palette

    def save_png(array: np.ndarray, path: Path) -> None:
        with atomic.atomic_open(path, "wb") as fh:
            Image.fromarray(array).save(fh, format="PNG")

    skipped: list[str] = []
    progress = FrameProgress(len(jobs), args.log_every)
    try:
        for start in range(0, len(jobs), args.batch_size):
            batch, originals = [], []
            for job in jobs[start:start + args.batch_size]:
                try:
                    originals.append(np.ascontiguousarray(load_image(job.source, None).transpose(1, 2, 0)))
                except DataError as exc:
                    # One bad frame in a long video must not cost the rest of the job.
                    reason = exc.__cause__ or exc
                    skipped.append(f"{job.source}: {type(reason).__name__}: {reason}")
                    progress.note(f"predict: skipping {skipped[-1]}")
                    continue
                batch.append(job)
            if batch:
                ids = predictor.predict(originals, args.settings)
                for job, rgb, pred in zip(batch, originals, ids, strict=False):
                    stem = job.output_stem(args.out)
                    ids_path, color_path, overlay_path = (stem.with_name(stem.name + s) for s in OUTPUT_SUFFIXES)
                    save_png(pred, ids_path)
                    save_png(palette.ids_to_rgb(pred), color_path)
                    save_png(with_legend(overlay(rgb, pred, palette), pred, palette), overlay_path)
            progress.advance(min(args.batch_size, len(jobs) - start))
    finally:
        progress.close()
    written = len(jobs) - len(skipped)
    print(f"wrote predictions for {written} frame(s) to {args.out}")
    if skipped:
        print(f"error: {len(skipped)} frame(s) could not be read and were skipped:\n  " + "\n  ".join(skipped),
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
