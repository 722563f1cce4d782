"""Evaluate a checkpoint on the validation split, one JSON file per rank; run it under torchrun.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_eval_script.py CONFIG CKPT OUT_DIR

Each rank writes ``OUT_DIR/rank<k>.json`` with the all-reduced metrics and the frames that
rank evaluated itself, so a test can compare with a single-process evaluation and check
that every frame was evaluated exactly once. :func:`evaluate_checkpoint` is the same code
path without torchrun.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dist_seg.checkpoint_file import load_checkpoint, load_model_state
from dist_seg.config import load_config
from dist_seg.data.loader import build_loader
from dist_seg.data.pipeline import load_datasets
from dist_seg.models import build_model
from dist_seg.runtime.device import resolve_runtime
from dist_seg.runtime.distributed import DistContext, setup_distributed, teardown_distributed
from dist_seg.train.augment import BatchPreparer
from dist_seg.train.losses import SegmentationLoss
from dist_seg.train.validation import evaluate


def evaluate_checkpoint(config_path: str | Path, checkpoint: str | Path, ctx: DistContext) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on this rank's shard of the validation split, combined over ranks."""
    cfg = load_config(config_path)
    data = load_datasets(cfg)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    load_model_state(model, load_checkpoint(checkpoint), checkpoint)
    model.to(ctx.device)
    runtime = resolve_runtime(cfg.backend, ctx.device, log=lambda _m: None)
    prep = BatchPreparer(ctx.device, runtime.memory_format, tuple(cfg.training.image_size), cfg.dataset.void_index)
    loader = build_loader(data.val, cfg.training, ctx, train=False)
    seen: list[str] = []

    def recording():
        for images, masks, paths in loader:
            seen.extend(str(p) for p in paths)
            yield images, masks, paths

    result = evaluate(model, recording(), prep, runtime, SegmentationLoss(), ctx, cfg.dataset.class_names,
                      cfg.dataset.void_index)
    return {"rank": ctx.rank, "world_size": ctx.world_size, "frames": result.frames, "loss": result.loss,
            "mean_iou": result.mean_iou, "pixel_acc": result.pixel_acc, "confusion": result.confusion.tolist(),
            "evaluated_here": seen, "val_frames": len(data.val)}


def main(argv: list[str]) -> int:
    config_path, checkpoint, out_dir = argv
    cfg = load_config(config_path)
    ctx = setup_distributed(cfg.backend)
    try:
        report = evaluate_checkpoint(config_path, checkpoint, ctx)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{ctx.rank}.json").write_text(json.dumps(report))
    finally:
        teardown_distributed(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
