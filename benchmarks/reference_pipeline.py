"""The original single-GPU pipeline's way of training, re-created as a standalone trainer.

It is the yardstick of the time-to-accuracy suite, so it does what the original did, not
what would be fast: every sample is decoded from its PNG/JPEG file with Pillow on every
access, randomly mirrored and rotated (+-5 degrees) as the original augmented, resized to
the training size (bilinear image, nearest mask) and its RGB mask turned into class ids by
looping over the palette colours; class weights come from a pass over every training mask
at full resolution (total / count, void 0, normalised to mean 1); the network is
torchvision's LR-ASPP MobileNetV3-Large from scratch, trained eagerly in float32 with AdamW
at a constant learning rate, class-weighted cross-entropy ignoring the void class, a torch
DataLoader with worker processes; validation every epoch computes mIoU from a confusion
matrix at the training resolution (classes that occur, void excluded: the same definition
as dist_seg's).

    python benchmarks/reference_pipeline.py --data-root ../shared/data/camvid_dev --out curve.json

The output is a JSON learning curve rewritten atomically after every epoch: per epoch the
wall-clock seconds since this process started (interpreter start-up included), the absolute
time, the training loss and the validation mIoU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

# The process start, not the import of this module: start-up counts in the wall-clock.
PROCESS_START = psutil.Process().create_time()

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
import yaml  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.models.segmentation import lraspp_mobilenet_v3_large  # noqa: E402

from dist_seg import atomic  # noqa: E402
from dist_seg.config import DAVID_CLASSES  # noqa: E402
from dist_seg.errors import DataError  # noqa: E402


def default_data_root() -> Path:
    """``../shared/data/camvid_dev`` beside the repository (beside the main checkout for a git worktree)."""
    relative = Path("shared") / "data" / "camvid_dev"
    candidate = REPO_ROOT.parent / relative
    git = REPO_ROOT / ".git"
    if not candidate.exists() and git.is_file():
        # A worktree's .git file reads "gitdir: <main checkout>/.git/worktrees/<name>".
        gitdir = Path(git.read_text().split("gitdir:", 1)[-1].strip())
        main_checkout = gitdir.parents[2]
        if (main_checkout.parent / relative).exists():
            return main_checkout.parent / relative
    return candidate


DEFAULT_DATA_ROOT = default_data_root()
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Settings:
    """Everything that defines a reference run (stored in the curve file)."""

    data_root: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    image_size: tuple[int, int] = (180, 240)
    batch_size: int = 4
    epochs: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    num_workers: int = 2
    frame_stride: int = 1
    seed: int = 1337
    device: str = "cpu"


@dataclass(frozen=True)
class Palette:
    """Class names, their label colours and the void class id (ignored in loss and mIoU)."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    void: int


def load_palette(root: Path) -> Palette:
    """``root/classes.yaml`` (CamVid-style ``classes`` + ``void_class``), else DAVID's 13 classes with void."""
    path = root / "classes.yaml"
    if not path.exists():
        return Palette(tuple(c.name for c in DAVID_CLASSES), tuple(c.color for c in DAVID_CLASSES),
                       [c.name for c in DAVID_CLASSES].index("void"))
    data = yaml.safe_load(path.read_text())
    names = tuple(c["name"] for c in data["classes"])
    void = data.get("void_class")
    if void not in names:
        raise DataError(f"{path}: void_class {void!r} is not one of the classes {', '.join(names)}; "
                        "the reference pipeline ignores the void class, so name one")
    return Palette(names, tuple(tuple(c["color"]) for c in data["classes"]), names.index(void))


def gather_samples(root: Path, sequences: tuple[str, ...], stride: int) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``sequences``, every ``stride``-th frame in name order."""
    pairs = []
    for sequence in sequences:
        image_dir, label_dir = root / "Images" / sequence, root / "Labels" / sequence
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DataError(f"{root}: sequence {sequence} needs Images/{sequence} and Labels/{sequence}; "
                            "check --data-root and the sequence names")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[::stride]
        for image in images:
            mask = label_dir / (image.stem + ".png")
            if not mask.exists():
                raise DataError(f"{image}: no mask {mask}")
            pairs.append((image, mask))
    if not pairs:
        raise DataError(f"{root}: no frames in sequences {', '.join(sequences)}")
    return pairs


def encode_mask(mask: Image.Image, palette: Palette) -> np.ndarray:
    """RGB mask -> class ids, one comparison pass per palette colour (unknown colours become void)."""
    rgb = np.asarray(mask, dtype=np.uint32)
    code = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    ids = np.full(code.shape, palette.void, dtype=np.int64)
    for class_id, (r, g, b) in enumerate(palette.colors):
        ids[code == ((r << 16) + (g << 8) + b)] = class_id
    return ids


def class_weights(samples: list[tuple[Path, Path]], palette: Palette) -> torch.Tensor:
    """Inverse pixel frequency over every training mask at full resolution, void 0, mean 1."""
    counts = np.zeros(len(palette.names), dtype=np.float64)
    for _image, mask_path in samples:
        with Image.open(mask_path) as mask:
            counts += np.bincount(encode_mask(mask.convert("RGB"), palette).ravel(), minlength=len(counts))
    counts[palette.void] = 0.0
    weights = counts.sum() / np.maximum(counts, 1.0)
    weights[palette.void] = 0.0
    weights /= max(weights.mean(), 1e-6)
    return torch.tensor(weights, dtype=torch.float32)


class DecodingDataset(Dataset):
    """Decodes, augments, resizes and colour-matches one frame per access."""

    def __init__(self, samples: list[tuple[Path, Path]], palette: Palette, size: tuple[int, int],
                 augment: bool) -> None:
        self.samples, self.palette, self.size, self.augment = samples, palette, size, augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(mask_path).convert("RGB")
        if self.augment:
            if random.random() < 0.5:
                image, mask = ImageOps.mirror(image), ImageOps.mirror(mask)
            if random.random() < 0.5:
                angle = random.uniform(-5.0, 5.0)
                image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
                mask = mask.rotate(angle, resample=Image.Resampling.NEAREST)
        wh = (self.size[1], self.size[0])
        image = image.resize(wh, resample=Image.Resampling.BILINEAR)
        mask = mask.resize(wh, resample=Image.Resampling.NEAREST)
        x = TF.normalize(TF.to_tensor(image), MEAN, STD)
        return x, torch.from_numpy(encode_mask(mask, self.palette))


def seed_worker(_worker_id: int) -> None:
    """Python's ``random`` in each worker from torch's per-worker seed, so flips differ between workers."""
    random.seed(torch.initial_seed() % 2**32)


def mean_iou(confusion: np.ndarray, void: int) -> tuple[float, float]:
    """(mIoU over classes that occur, void excluded; pixel accuracy) from a label x prediction matrix."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    scored = [i for i in range(len(tp)) if i != void and union[i] > 0]
    miou = float(np.mean(tp[scored] / union[scored])) if scored else float("nan")
    total = confusion.sum()
    return miou, float(tp.sum() / total) if total else float("nan")


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, palette: Palette, device: torch.device) -> tuple[float, float]:
    """mIoU and pixel accuracy of ``model`` over ``loader`` (void pixels not counted)."""
    k = len(palette.names)
    confusion = torch.zeros(k * k, dtype=torch.int64)
    model.eval()
    for x, y in loader:
        pred = model(x.to(device))["out"].argmax(1).cpu()
        valid = y != palette.void
        confusion += torch.bincount(y[valid] * k + pred[valid], minlength=k * k)
    model.train()
    return mean_iou(confusion.view(k, k).numpy(), palette.void)


def elapsed() -> float:
    """Seconds since this process started."""
    return time.time() - PROCESS_START


def train(settings: Settings, out: Path, log=print) -> dict:
    """Run the reference for ``settings.epochs`` epochs, rewriting the curve at ``out`` after each; returns it."""
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    root = Path(settings.data_root)
    device = torch.device(settings.device)
    palette = load_palette(root)
    train_samples = gather_samples(root, settings.train, settings.frame_stride)
    val_samples = gather_samples(root, settings.val, settings.frame_stride)
    weights = class_weights(train_samples, palette)
    log(f"reference: {len(train_samples)} train / {len(val_samples)} val frames, class weights "
        + " ".join(f"{n}={w:.2f}" for n, w in zip(palette.names, weights.tolist(), strict=False)))
    loader_args = dict(batch_size=settings.batch_size, num_workers=settings.num_workers,
                       persistent_workers=settings.num_workers > 0, worker_init_fn=seed_worker)
    train_loader = DataLoader(DecodingDataset(train_samples, palette, settings.image_size, augment=True),
                              shuffle=True, drop_last=False, **loader_args)
    val_loader = DataLoader(DecodingDataset(val_samples, palette, settings.image_size, augment=False),
                            shuffle=False, **loader_args)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(palette.names)).to(device)
    criterion = torch.nn.CrossEntropyLoss(weight=weights.to(device), ignore_index=palette.void)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    curve = {"pipeline": "reference", "settings": asdict(settings), "process_start": PROCESS_START,
             "train_frames": len(train_samples), "val_frames": len(val_samples), "epochs": []}
    model.train()
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        loss_sum, batches = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(model(x)["out"], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            batches += 1
        miou, pixel_acc = validate(model, val_loader, palette, device)
        record_epoch(curve, out, "reference", epoch, settings.epochs, start, loss_sum / max(batches, 1), miou,
                     pixel_acc, log)
    return curve


def record_epoch(curve: dict, out: Path, name: str, epoch: int, epochs: int, start: float, train_loss: float,
                 miou: float, pixel_acc: float, log, **extra) -> dict:
    """Append one epoch's record to ``curve``, rewrite ``out`` atomically and log it; returns the record.

    ``start`` is the epoch's ``time.perf_counter()``; ``extra`` (e.g. the LR) goes into the record.
    """
    record = {"epoch": epoch, "wall_s": round(elapsed(), 3), "timestamp": time.time(),
              "epoch_time_s": round(time.perf_counter() - start, 3), "train_loss": train_loss, **extra,
              "val_mIoU": miou, "val_pixel_acc": pixel_acc}
    curve["epochs"].append(record)
    curve["final_mIoU"] = miou
    atomic.write_json(out, curve)
    log(f"{name} epoch {epoch}/{epochs}: loss {train_loss:.4f} val mIoU {miou:.4f} pixel acc {pixel_acc:.4f} "
        f"at {record['wall_s']:.1f} s")
    return record


def parse_args(argv: list[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python benchmarks/reference_pipeline.py",
                                     description="Train the original pipeline's way and write its learning curve.")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"dataset in DAVID layout (default: {DEFAULT_DATA_ROOT})")
    parser.add_argument("--train", nargs="+", default=["0001TP", "0006R0"], help="training sequences")
    parser.add_argument("--val", nargs="+", default=["Seq05VD"], help="validation sequences")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame (quick runs)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="learning-curve JSON to write")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.frame_stride < 1:
        parser.error("--epochs and --frame-stride must be at least 1")
    return Settings(str(args.data_root.resolve()), tuple(args.train), tuple(args.val), epochs=args.epochs,
                    num_workers=args.workers, frame_stride=args.frame_stride, seed=args.seed,
                    device=args.device), args.out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse_args(argv)
    curve = train(settings, out, log=lambda m: print(m, flush=True))
    print(json.dumps({"final_mIoU": curve["final_mIoU"], "wall_s": curve["epochs"][-1]["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
