"""One export: checkpoint -> staged artifact -> parity check -> final artifact + model card.

The artifact is written into a staging folder in the output directory and renamed only
after the parity check passes, so a failed export never leaves a file that looks final;
staging folders of killed exports are removed by the next export into the same directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import atomic
from ..errors import ExportError
from ..eval.inference import MEAN, STD
from .card import build_card, card_path
from .graph import INPUT_NAME, deployable, load_export_source
from .onnx_export import export_onnx
from .onnx_predictor import open_session
from .parity import (
    PARITY_FRAMES,
    ArtifactRunner,
    ParityReport,
    check_sizes,
    measure_parity,
    parity_frames,
    pytorch_logits,
)
from .requirements import package_version, require
from .torch_export import export_program, program_runner, save_program

Format = Literal["onnx", "torch-export"]
ARTIFACT_NAMES: dict[str, str] = {"onnx": "model.onnx", "torch-export": "model.pt2"}
EXAMPLE_BATCH = 2  # batch 1 would let the tracer specialise the batch dimension to a constant


@dataclass(frozen=True)
class ExportRequest:
    """What ``python -m dist_seg.export`` was asked to do."""

    checkpoint: Path
    format: Format
    out_dir: Path
    height: int | None = None  # None: the checkpoint's training.image_size
    width: int | None = None
    dynamic_size: bool = False
    opset: int | None = None
    ema: bool = False
    with_logits: bool = False
    check: bool = True
    custom_model: str | None = None  # the user's import path for a checkpoint of a custom model


@dataclass(frozen=True)
class ExportResult:
    """The files written and the parity figures (None with ``check=False``)."""

    artifact: Path
    card: Path
    parity: ParityReport | None


def _onnx_runner(path: Path) -> ArtifactRunner:
    session, ids_name, logits_name = open_session(path)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, logits = session.run([ids_name, logits_name], {INPUT_NAME: images})
        return ids, logits

    return run


def export_artifact(request: ExportRequest, log: Callable[[str], None] = print) -> ExportResult:
    """Export, check and publish one artifact; raises :class:`ExportError` (nothing published) on failure."""
    if request.format == "onnx":
        require("onnx", "ONNX export")
        require("onnxscript", "ONNX export")
        if request.check:
            require("onnxruntime", "the ONNX parity check")
    source = load_export_source(request.checkpoint, request.ema, request.custom_model)
    cfg = source.config
    height = request.height or cfg.training.image_size[0]
    width = request.width or cfg.training.image_size[1]
    wrapper = deployable(source, request.with_logits)
    example = torch.randint(0, 256, (EXAMPLE_BATCH, 3, height, width), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    final = request.out_dir / ARTIFACT_NAMES[request.format]
    log(f"export: {source.model_name} ({source.weights} weights, epoch {source.epoch}) from {request.checkpoint} "
        f"-> {final} at {height}x{width}" + (" (dynamic height/width)" if request.dynamic_size else ""))
    request.out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(request.out_dir)
    with atomic.staging_folder(final) as staging:
        staged = staging / final.name
        exporter = {"torch": torch.__version__}
        try:
            if request.format == "onnx":
                info = export_onnx(wrapper, example, staged, request.dynamic_size, request.opset, source.model_name,
                                   log)
                exporter.update(method=f"torch.onnx.export ({info.exporter})", opset=info.opset)
                for module in ("onnx", "onnxscript", "onnxruntime"):
                    exporter[module] = package_version(module)
                runner = _onnx_runner
            else:
                save_program(export_program(wrapper, example, request.dynamic_size, source.model_name), staged)
                exporter.update(method="torch.export.export + torch.export.save")
                runner = program_runner
        except Exception as exc:
            # The exporters write the file themselves, not through atomic_open.
            atomic.raise_if_disk_full(exc, final, staged.stat().st_size if staged.is_file() else 0)
            raise
        report = None
        if request.check:
            frames, where = parity_frames(cfg, PARITY_FRAMES, (height, width))
            report = measure_parity(pytorch_logits(source), runner(staged), frames, where,
                                    check_sizes(height, width, request.dynamic_size))
            for line in report.lines():
                log(line)
            if not report.passed:
                raise ExportError(f"parity check failed: {final.name} disagrees with the PyTorch model beyond the "
                                  "tolerance (see the parity lines above), so nothing was written to "
                                  f"{request.out_dir}. Try the other exporter format or another --opset, and "
                                  "report the model type; --no-check skips the check at your own risk")
        else:
            log("parity check skipped (--no-check)")
        card = build_card(
            artifact=final, artifact_format=request.format, model=dict(source.raw_config.get("model", {})),
            palette=source.palette, input_size=(height, width), dynamic_size=request.dynamic_size,
            ids_dtype=str(wrapper.ids_dtype).removeprefix("torch."), with_logits=request.with_logits,
            mean=MEAN, std=STD, training_config=source.raw_config,
            checkpoint={"path": str(request.checkpoint), "weights": source.weights, "epoch": source.epoch,
                        "global_step": source.global_step, "best_mIoU": source.best_miou},
            exporter=exporter, parity=report.to_dict() if report else None,
        )
        # The card first: if it cannot be written (a full disk) the artifact is not published without it.
        card_file = card_path(final)
        atomic.write_json(card_file, card)
        os.replace(staged, final)
    log(f"wrote {final} and {card_file}")
    return ExportResult(final, card_file, report)
