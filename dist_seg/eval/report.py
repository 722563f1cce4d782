"""Reports of a native-resolution evaluation: JSON, markdown, confusion CSV and a heat-map picture.

``<out>/metrics.json``     every number (machine-readable)
``<out>/report.md``        the same as tables a person reads
``<out>/confusion.csv``    pixel counts, rows = ground truth, columns = prediction
``<out>/confusion.png``    the confusion matrix row-normalised (each row sums to 100 %), class names on both axes
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import atomic
from .native import NativeEvalResult

REPORT_FILES = ("metrics.json", "report.md", "confusion.csv", "confusion.png")


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def to_json(result: NativeEvalResult) -> dict:
    """Plain data of every number in ``result`` (NaN becomes null)."""
    video = result.video
    return {
        "source": result.source, "checkpoint": result.checkpoint, "inference": result.settings,
        "mask_format": result.mask_format, "frames": result.frames, "world_size": result.world_size,
        "device": result.device, "seconds": result.seconds, "images_per_s": _num(result.images_per_s),
        "mean_iou": _num(result.mean_iou), "pixel_acc": _num(result.pixel_acc), "fw_iou": _num(result.fw_iou),
        "iou": {k: _num(v) for k, v in result.iou.items()},
        "void_class": result.void_class, "train_overlap": result.train_overlap,
        "vc": {str(n): _num(v) for n, v in video.vc.items()}, "flicker": _num(video.flicker),
        "sequences": {
            name: {"frames": seq.frames, "mean_iou": _num(seq.mean_iou), "pixel_acc": _num(seq.pixel_acc),
                   **({"vc": {str(n): _num(v) for n, v in video.sequences[name].vc.items()},
                       "vc_windows": {str(n): w for n, w in video.sequences[name].vc_windows.items()},
                       "flicker": _num(video.sequences[name].flicker),
                       "static_pixels": video.sequences[name].static_pixels,
                       "flickering_pixels": video.sequences[name].flickering_pixels}
                      if name in video.sequences else {})}
            for name, seq in result.sequences.items()},
        "class_names": result.class_names, "confusion": result.confusion.tolist(),
    }


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def format_table(result: NativeEvalResult) -> str:
    """Markdown tables: summary, per-class IoU, per-sequence metrics (also what the CLI prints)."""
    video = result.video
    lines = [f"Evaluated {result.checkpoint} on {result.source}: {result.frames} frames at native resolution, "
             f"inference {result.settings}, {result.world_size} process(es) on {result.device}, "
             f"{result.seconds:.1f} s ({result.images_per_s:.1f} images/s).", "",
             "| metric | value |", "|---|---|",
             f"| mIoU | {_fmt(result.mean_iou)} |", f"| pixel accuracy | {_fmt(result.pixel_acc)} |",
             f"| frequency-weighted IoU | {_fmt(result.fw_iou)} |"]
    lines += [f"| VC_{n} | {_fmt(v)} |" for n, v in video.vc.items()]
    lines += [f"| flicker rate | {_fmt(video.flicker)} |", "", "| class | IoU |", "|---|---|"]
    lines += [f"| {name}{' (void, not in mIoU)' if name == result.void_class else ''} | {_fmt(v)} |"
              for name, v in result.iou.items()]
    vc_heads = " | ".join(f"VC_{n}" for n in video.window_sizes)
    lines += ["", f"| sequence | frames | mIoU | pixel acc | {vc_heads} | flicker |",
              "|---|---|---|---|" + "---|" * len(video.window_sizes) + "---|"]
    for name, seq in result.sequences.items():
        vm = video.sequences.get(name)
        vcs = " | ".join(_fmt(vm.vc[n]) if vm else "-" for n in video.window_sizes)
        lines.append(f"| {name} | {seq.frames} | {_fmt(seq.mean_iou)} | {_fmt(seq.pixel_acc)} | {vcs} | "
                     f"{_fmt(vm.flicker) if vm else '-'} |")
    return "\n".join(lines)


def _markdown(result: NativeEvalResult) -> str:
    void = (f"Pixels labelled `{result.void_class}` (the void class) and unknown colours are ignored."
            if result.void_class else "Pixels with unknown mask values (label 255) are ignored.")
    return "\n".join([
        "# Evaluation report", "",
        *([f"**Warning: {len(result.train_overlap)} scored sequence(s) were trained on by this checkpoint "
           f"({', '.join(result.train_overlap)}): their scores are inflated.**", ""] if result.train_overlap else []),
        format_table(result), "",
        "## How these numbers are computed", "",
        "- Logits are upsampled to each frame's own size and scored against its mask as annotated. " + void,
        "- mIoU averages the IoU of the classes that occur in labels or predictions (void excluded); "
        "frequency-weighted IoU weights each class's IoU by its share of labelled pixels.",
        "- Frames are in sorted file order inside each sequence. VC_n: for each window of n consecutive frames, "
        "among pixels whose label is the same (and not ignored) in all n frames, the share whose prediction is "
        "also the same in all n; averaged over the windows of a sequence, then over sequences.",
        "- Flicker rate: among pixels whose label is equal (and not ignored) in frames t-1 and t, the share whose "
        "prediction changes; pooled over all such pixels.",
        "", "![confusion matrix, row-normalised](confusion.png)", ""])


def _confusion_csv(result: NativeEvalResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label \\ prediction", *result.class_names])
    for name, row in zip(result.class_names, result.confusion.tolist(), strict=False):
        writer.writerow([name, *row])
    return buffer.getvalue()


def confusion_picture(confusion: np.ndarray, class_names: list[str], cell: int = 34) -> Image.Image:
    """Row-normalised confusion matrix as a heat map: white (0 %) to dark blue (100 %), percentages in cells.

    Rows are ground-truth classes, columns predicted classes; a row without labelled pixels
    stays grey. Class names are written with Pillow's default font, column names rotated.
    """
    font = ImageFont.load_default()
    rows = confusion.astype(np.float64).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, confusion / rows, np.nan)
    n = len(class_names)
    label_w = max(int(font.getlength(name)) for name in class_names) + 12
    left, top = label_w + 16, label_w + 34
    image = Image.new("RGB", (left + n * cell + 10, top + n * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), "rows: ground truth, columns: prediction (% of each row)", fill="black", font=font)
    for i, name in enumerate(class_names):
        y = top + i * cell + cell // 2 - 5
        draw.text((left - 6 - int(font.getlength(name)), y), name, fill="black", font=font)
        column = Image.new("RGB", (label_w, 14), "white")
        ImageDraw.Draw(column).text((2, 1), name, fill="black", font=font)
        rotated = column.rotate(90, expand=True)
        image.paste(rotated, (left + i * cell + cell // 2 - 7, top - label_w - 4))
        for j in range(n):
            value = share[i, j]
            x0, y0 = left + j * cell, top + i * cell
            if math.isnan(value):
                fill, ink = (200, 200, 200), "black"
            else:
                # White to dark blue; dark cells get white text.
                fill = tuple(int(round(255 - value * (255 - c))) for c in (8, 48, 107))
                ink = "white" if value > 0.5 else "black"
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill, outline=(230, 230, 230))
            if not math.isnan(value) and value >= 0.005:
                text = f"{100 * value:.0f}"
                draw.text((x0 + (cell - font.getlength(text)) / 2, y0 + cell // 2 - 5), text, fill=ink, font=font)
    return image


def write_report(result: NativeEvalResult, out_dir: str | Path) -> list[Path]:
    """Write :data:`REPORT_FILES` into ``out_dir`` (atomically) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "metrics.json", to_json(result))
    atomic.write_text(out / "report.md", _markdown(result))
    atomic.write_text(out / "confusion.csv", _confusion_csv(result))
    with atomic.atomic_open(out / "confusion.png", "wb") as fh:
        confusion_picture(result.confusion, result.class_names).save(fh, format="PNG")
    return [out / name for name in REPORT_FILES]
