"""``python -m dist_seg.predict --checkpoint CKPT INPUT... --out DIR``.

INPUT is an image, a folder of images (a sequence) or a dataset root with an ``Images/``
folder. For every frame it writes ``<stem>_ids.png`` (class ids), ``<stem>_color.png``
(palette colours) and ``<stem>_overlay.png``, mirroring the input's folder structure.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .cli_common import add_inference_arguments, inference_settings, run_cli
from .data.discovery import IMAGE_SUFFIXES, list_files
from .errors import DataError



@dataclass(frozen=True)
class PredictJob:
    """One input frame and where its outputs go (relative to --out)."""

    source: Path
    relative_dir: Path


def collect_inputs(inputs: Sequence[str], images_dir: str = "Images") -> list[PredictJob]:
    """Expand image files, sequence folders and dataset roots into frames, sorted and de-duplicated."""
    jobs: list[PredictJob] = []
    for item in inputs:
        path = Path(item).expanduser()
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
            jobs += [PredictJob(f, Path(path.name)) for f in found]
        else:
            raise DataError(f"input {path} does not exist")
    unique = list(dict.fromkeys(jobs))
    if not unique:
        raise DataError("no input images found")
    return unique


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_seg.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a dist_seg checkpoint (e.g. outputs/x/best_model.pth)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, sequence folder or dataset root")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (auto: GPU when available)")
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    settings = inference_settings(parser, args)

    from PIL import Image
    from tqdm import tqdm

    from . import atomic
    from .config import BackendConfig
    from .engine.distributed import select_device
    from .engine.inference import Predictor
    from .engine.runtime import resolve_runtime
    from .engine.visualize import overlay

    jobs = collect_inputs(args.inputs)
    device = select_device(BackendConfig(target=args.device), local_rank=0)
    runtime = resolve_runtime(BackendConfig(target=args.device, compile=False), device, log=lambda _m: None)
    predictor = Predictor.from_checkpoint(args.checkpoint, device, runtime)
    out_dir = Path(args.out)

    def save_png(array: np.ndarray, path: Path) -> None:
        with atomic.atomic_open(path, "wb") as fh:
            Image.fromarray(array).save(fh, format="PNG")

    for start in tqdm(range(0, len(jobs), args.batch_size), desc="predict", unit="batch",
                      disable=not sys.stderr.isatty()):
        batch = jobs[start:start + args.batch_size]
        originals = []
        for job in batch:
            try:
                with Image.open(job.source) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise DataError(f"cannot read image {job.source}: {exc}") from exc
            originals.append(rgb)
        ids = predictor.predict(originals, settings)
        for job, rgb, pred in zip(batch, originals, ids):
            folder = out_dir / job.relative_dir
            stem = job.source.stem
            save_png(pred, folder / f"{stem}_ids.png")
            save_png(predictor.palette.ids_to_rgb(pred), folder / f"{stem}_color.png")
            save_png(overlay(rgb, pred, predictor.palette), folder / f"{stem}_overlay.png")
    print(f"wrote predictions for {len(jobs)} frame(s) to {out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
