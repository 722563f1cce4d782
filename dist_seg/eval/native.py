"""Evaluate a checkpoint at native resolution: every frame scored at its own size, with video metrics.

Frames are read from their image files and labelled through :mod:`.inference` (with
optional TTA / sliding window); the logits are upsampled to the frame's size and scored
against the mask as annotated (from the native mask cache, :mod:`dist_seg.data.native_masks`).

Under torchrun the work is sharded by SEQUENCE, without padding: every frame is scored
exactly once and consecutive frames stay on one rank, so the video metrics see every
pair. Only counts cross the network (the per-sequence confusion matrices and the
per-sequence video-metric totals, all-reduced), so the result equals a single-process run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import IGNORE_INDEX, Config
from ..data.cache import CACHE_DIR_KEY
from ..data.checks import listing_problems
from ..data.decode import load_image
from ..data.discovery import discover
from ..data.native_masks import FrameSequence, NativeMasks, ensure_native_masks
from ..data.splits import SPLITS_FILE, read_splits
from ..errors import CheckpointError, DataError
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from .inference import InferenceSettings, Predictor
from .metrics import frequency_weighted_iou, metrics_from_confusion, update_confusion
from .video_metrics import WINDOW_SIZES, VideoMetrics, VideoMetricsAccumulator

_GREY_OR_PALETTE = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


@dataclass
class SequenceResult:
    """Image metrics of one sequence (its video metrics are in :attr:`NativeEvalResult.video`)."""

    frames: int
    mean_iou: float
    pixel_acc: float


@dataclass
class NativeEvalResult:
    """Everything one evaluation measured; :meth:`scalars` gives the TensorBoard values."""

    source: str  # "split test of <splits.json>" or "root <dir>"
    checkpoint: str
    settings: str  # Predictor.describe(): mode, slide window, TTA, precision
    class_names: list[str]
    void_class: str | None
    confusion: np.ndarray  # [C, C] int64, rows = label, cols = prediction, native resolution
    mean_iou: float
    pixel_acc: float
    fw_iou: float
    iou: dict[str, float]  # NaN for classes absent from both prediction and labels
    sequences: dict[str, SequenceResult]
    video: VideoMetrics
    frames: int
    seconds: float  # wall time of the slowest rank's loop (decode + inference + scoring)
    world_size: int = 1
    device: str = "cpu"
    mask_format: str = "rgb"
    # Scored sequences the checkpoint was trained on (by name): their scores are inflated.
    train_overlap: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.nan

    def scalars(self, prefix: str) -> dict[str, float]:
        """``{prefix}/mIoU``, ``/pixel_acc``, ``/fwIoU``, ``/IoU/<class>``, ``/VC_<n>``, ``/flicker`` (finite ones)."""
        values = {f"{prefix}/mIoU": self.mean_iou, f"{prefix}/pixel_acc": self.pixel_acc,
                  f"{prefix}/fwIoU": self.fw_iou, f"{prefix}/flicker": self.video.flicker}
        values.update({f"{prefix}/VC_{n}": v for n, v in self.video.vc.items()})
        values.update({f"{prefix}/IoU/{name}": v for name, v in self.iou.items()})
        return {k: v for k, v in values.items() if not math.isnan(v)}


# ----------------------------------------------------------------------------- what to evaluate


def sequences_from_split(cfg: Config, split: str) -> list[FrameSequence]:
    """The sequences of ``split`` in ``<training.output_dir>/splits.json``, frames in sorted order."""
    try:
        splits = read_splits(cfg)
    except DataError as exc:
        raise DataError(f"{exc}; or evaluate any dataset folder with --root DIR") from None
    chosen = splits.get(split)
    path = Path(cfg.training.output_dir) / SPLITS_FILE
    if not chosen:
        raise DataError(f"split {split!r} of {path} has no sequences; "
                        "choose another --split or evaluate a folder with --root DIR")
    sequences = [FrameSequence(seq.name, seq.root, tuple(seq.frame_records())) for seq in chosen]
    gone = _gone(sequences)
    if gone:
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise DataError(f"{path} lists {gone[0]}, which no longer exists{more}: the data changed or moved since "
                        "the split was made; re-run python -m dist_seg.prepare CONFIG with dataset.root where the "
                        "data is now, or evaluate the folder as it is with --root DIR")
    return sequences


def _gone(sequences: Sequence[FrameSequence]) -> list[Path]:
    """The dataset roots of ``sequences`` that no longer exist, else their missing image and mask files."""
    roots = sorted({seq.root for seq in sequences if not seq.root.is_dir()})
    if roots:
        return roots
    return [path for seq in sequences for frame in seq.frames for path in (frame.image, frame.mask)
            if not path.is_file()]


def sequences_from_root(root: Path, cfg: Config) -> list[FrameSequence]:
    """Every sequence of a DAVID-layout root (no include/exclude), frames in sorted order."""
    listing = discover(Path(root), cfg.dataset, apply_filters=False, root_key="--root")
    problems = listing_problems(listing, cfg.dataset)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(f"{root} cannot be evaluated:\n" + "\n".join(f"  {p}" for p in errors))
    return [FrameSequence(seq.name, listing.root, seq.frames) for seq in listing.sequences if seq.frames]


def detect_mask_format(sequences: Sequence[FrameSequence], default: str) -> str:
    """``index`` when the first mask is single-channel, ``rgb`` when it is colour, else ``default``."""
    try:
        with Image.open(sequences[0].frames[0].mask) as mask:
            mode = mask.mode
    except (OSError, IndexError):
        return default  # decoding reports an unreadable mask with its name
    if mode in ("RGB", "RGBA"):
        return "rgb"
    return "index" if mode in _GREY_OR_PALETTE and mode != "P" else default


def check_same_classes(predictor: Predictor, cfg: Config, source: str) -> None:
    """CheckpointError naming the checkpoint when ``cfg`` labels other classes than it was trained on."""
    trained = [(c.name, tuple(c.color)) for c in predictor.config.dataset.classes]
    wanted = [(c.name, tuple(c.color)) for c in cfg.dataset.classes]
    if trained == wanted:
        return
    def names(classes: list) -> str:
        return ", ".join(f"{n} {list(c)}" for n, c in classes)
    raise CheckpointError(
        f"checkpoint {predictor.checkpoint} was trained on {len(trained)} classes ({names(trained)}) but {source} "
        f"defines {len(wanted)} ({names(wanted)}); evaluate it with the config it was trained with, "
        "or pass --root DIR alone to use the checkpoint's own classes")


def shard_by_sequence(sequences: Sequence[FrameSequence], rank: int, world_size: int) -> list[FrameSequence]:
    """This rank's whole sequences: longest first to the least-loaded rank (ties: lowest rank); no padding."""
    load = [0] * world_size
    owner: dict[str, int] = {}
    for seq in sorted(sequences, key=lambda s: (-len(s.frames), s.name)):
        target = min(range(world_size), key=lambda r: (load[r], r))
        owner[seq.name] = target
        load[target] += len(seq.frames)
    return [seq for seq in sequences if owner[seq.name] == rank]


# ----------------------------------------------------------------------------- loading frames


class _FrameImages(Dataset):
    """Native-size uint8 ``[3, H, W]`` images of a list of frames (decoded in loader workers)."""

    def __init__(self, frames: Sequence[Path]) -> None:
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(load_image(self.frames[index], None)), index


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    return torch.stack([image for image, _ in items]), [index for _, index in items]


def _equal_size_batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Consecutive indices, at most ``batch_size`` per batch, a new batch wherever the size changes."""
    batches: list[list[int]] = []
    for i, shape in enumerate(shapes):
        if batches and len(batches[-1]) < batch_size and shapes[batches[-1][0]] == shape:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


# ----------------------------------------------------------------------------- the evaluation


@torch.no_grad()
def evaluate_sequences(predictor: Predictor, sequences: Sequence[FrameSequence], data_cfg: Config,
                       ctx: DistContext, *, settings: InferenceSettings = InferenceSettings(),
                       batch_size: int = 4, num_workers: int = 2, source: str = "",
                       log: Callable[[str], None] = print, progress: bool = False,
                       cache_key: str = CACHE_DIR_KEY,
                       on_frames: Callable[[int, int], None] | None = None) -> NativeEvalResult:
    """Score ``predictor`` on ``sequences`` (all ranks call this with the same list; each takes its shard).

    ``cache_key`` names the setting that chose ``data_cfg``'s cache folder, for its error messages.
    ``on_frames(n, total)`` is called after each batch of ``n`` of this rank's ``total`` frames.
    """
    classes = predictor.palette.num_classes
    void_index = data_cfg.dataset.void_index
    device = next(predictor.model.parameters()).device
    mine = shard_by_sequence(sequences, ctx.rank, ctx.world_size)
    # A bad frame in one rank's shard stops every rank here, not at the all-reduce below.
    masks = ctx.fail_together(lambda: ensure_native_masks(mine, data_cfg, log=log, progress=progress,
                                                          cache_key=cache_key).masks)

    names = [seq.name for seq in sequences]
    seq_index = {name: i for i, name in enumerate(names)}
    confusion = torch.zeros(len(names), classes, classes, dtype=torch.int64, device=device)
    video = VideoMetricsAccumulator(WINDOW_SIZES, device, sequence_names=names)
    items = [(seq.name, i) for seq in mine for i in range(len(seq.frames))]
    images = _FrameImages([frame.image for seq in mine for frame in seq.frames])
    shapes = [masks[name].shapes[i] for name, i in items]
    loader = DataLoader(images, batch_sampler=_equal_size_batches(shapes, batch_size), num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(items), desc="evaluate", unit="frame", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    def score() -> None:
        for batch, indices in loader:
            pred = predictor.scores(batch, settings).argmax(1)
            target = _targets([items[i] for i in indices], masks, void_index).to(device, non_blocking=True)
            for b, i in enumerate(indices):
                update_confusion(confusion[seq_index[items[i][0]]], pred[b], target[b], classes)
            video.update(pred, target, [items[i][0] for i in indices])
            bar.update(len(indices))
            if on_frames is not None:
                on_frames(len(indices), len(items))

    ctx.fail_together(score)  # an image that became unreadable since its mask was cached
    bar.close()
    totals = video.totals()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    ctx.all_reduce_sum(confusion)
    ctx.all_reduce_sum(totals)
    ctx.all_reduce_max(elapsed)
    per_sequence = confusion.cpu().numpy()
    return _result(predictor, data_cfg, names, per_sequence, video.result(totals), float(elapsed.item()),
                   settings, source, ctx, device)


def _targets(items: Sequence[tuple[str, int]], masks: dict[str, NativeMasks], void_index: int | None) -> torch.Tensor:
    target = torch.from_numpy(np.stack([masks[name].mask(i) for name, i in items])).long()
    if void_index is not None:
        target = torch.where(target == void_index, IGNORE_INDEX, target)
    return target


def _result(predictor: Predictor, data_cfg: Config, names: list[str], per_sequence: np.ndarray,
            video: VideoMetrics, seconds: float, settings: InferenceSettings, source: str, ctx: DistContext,
            device: torch.device) -> NativeEvalResult:
    class_names = data_cfg.dataset.class_names
    void_index = data_cfg.dataset.void_index
    total = per_sequence.sum(0)
    mean_iou, pixel_acc, iou = metrics_from_confusion(total, class_names, void_index)
    sequences = {}
    for name, conf in zip(names, per_sequence, strict=False):
        frames = video.sequences[name].frames if name in video.sequences else 0
        seq_miou, seq_acc, _ = metrics_from_confusion(conf, class_names, void_index)
        sequences[name] = SequenceResult(frames, seq_miou, seq_acc)
    return NativeEvalResult(
        source=source, checkpoint=str(predictor.checkpoint), settings=predictor.describe(settings), class_names=class_names,
        void_class=data_cfg.dataset.void_class, confusion=total, mean_iou=mean_iou, pixel_acc=pixel_acc,
        fw_iou=frequency_weighted_iou(total, void_index), iou=iou, sequences=sequences, video=video,
        frames=sum(s.frames for s in sequences.values()), seconds=seconds, world_size=ctx.world_size,
        device=str(device))


def evaluate_checkpoint(checkpoint: str | Path, ctx: DistContext, runtime: Runtime, *,
                        config: Config | None = None, split: str = "test", root: str | Path | None = None,
                        settings: InferenceSettings = InferenceSettings(), batch_size: int = 4,
                        num_workers: int = 2, mask_format: str | None = None, cache_dir: str | Path | None = None,
                        cache_key: str = CACHE_DIR_KEY, log: Callable[[str], None] = print,
                        progress: bool = False, on_frames: Callable[[int, int], None] | None = None,
                        custom_model: str | None = None) -> NativeEvalResult:
    """Evaluate ``checkpoint`` on ``split`` (from splits.json) or on every sequence under ``root``.

    The checkpoint alone is enough: its embedded config gives the classes, the model and (for ``split``) the
    output folder holding splits.json. ``config`` (e.g. the training run's) replaces the embedded one for the
    data and must have the same classes. ``cache_key`` names the setting that chose the cache folder (the
    option that gave ``cache_dir``), for its error messages. ``custom_model`` is the user's import path for a
    checkpoint of a custom model (the one inside the checkpoint is never imported). Every rank calls this; the
    result is the same on every rank, and a user error stops every rank, reported once by rank 0.
    """
    def setup() -> tuple[Predictor, Config, list[FrameSequence], str]:
        predictor = Predictor.from_checkpoint(checkpoint, ctx.device, runtime, custom_model=custom_model)
        return (predictor, *_data_to_evaluate(predictor, config, split, root, mask_format, cache_dir, log))

    predictor, data_cfg, sequences, source = ctx.fail_together(setup)
    overlap = sorted({seq.name for seq in sequences} & set(predictor.trained_sequences or ()))
    if overlap:
        log(f"WARNING: {len(overlap)} scored sequence(s) were trained on by this checkpoint "
            f"({', '.join(overlap)}): their scores are inflated and say nothing about new data. Score a held-out "
            "split (--split test / val) or a --root of other footage; the report lists them under train_overlap")
    log(f"evaluate: {source}: {len(sequences)} sequences, {sum(len(s.frames) for s in sequences)} frames, "
        f"{predictor.describe(settings)}, {ctx.world_size} process(es)")
    result = evaluate_sequences(predictor, sequences, data_cfg, ctx, settings=settings, batch_size=batch_size,
                                num_workers=num_workers, source=source, log=log, progress=progress,
                                cache_key=cache_key, on_frames=on_frames)
    result.mask_format = data_cfg.dataset.mask_format
    result.train_overlap = overlap
    return result


def _data_to_evaluate(predictor: Predictor, config: Config | None, split: str, root: str | Path | None,
                      mask_format: str | None, cache_dir: str | Path | None, log: Callable[[str], None] = print
                      ) -> tuple[Config, list[FrameSequence], str]:
    """The data config, the sequences and their description (``source``) that :func:`evaluate_checkpoint` scores."""
    data_cfg = predictor.config if config is None else config
    if config is not None:
        check_same_classes(predictor, config, "the config")
    dataset = data_cfg.dataset
    if cache_dir is not None:
        dataset = replace(dataset, cache_dir=Path(cache_dir))
    if root is not None:
        dataset = replace(dataset, root=Path(root))
    data_cfg = replace(data_cfg, dataset=dataset)
    if root is not None:
        sequences = sequences_from_root(Path(root), data_cfg)
        if not sequences:
            raise DataError(f"{root} holds no sequence with paired frames: expected "
                            f"{root}/{dataset.images}/<sequence>/*.png and {root}/{dataset.labels}/<sequence>/*.png")
        # The format the model was trained with (or the config's) unless told: a grey-scale (mode L) PNG
        # may hold RGB-format labels whose colours are greys, so the file mode only prompts a note.
        chosen = mask_format or dataset.mask_format
        looks = detect_mask_format(sequences, chosen)
        if mask_format is None and looks != chosen:
            log(f"note: the masks under {root} look like {looks} masks, but the checkpoint's dataset.mask_format "
                f"is {chosen} and they are read as such; pass --mask-format {looks} if they hold {looks} labels")
        data_cfg = replace(data_cfg, dataset=replace(dataset, mask_format=chosen))
        return data_cfg, sequences, f"root {Path(root).resolve()}"
    if mask_format is not None:
        data_cfg = replace(data_cfg, dataset=replace(dataset, mask_format=mask_format))
    sequences = sequences_from_split(data_cfg, split)
    return data_cfg, sequences, f"split {split} of {Path(data_cfg.training.output_dir) / SPLITS_FILE}"
