"""The peers' training recipes, re-created as standalone trainers: the yardsticks beside dist_seg.

Two recipes, each as its source trains a torchvision segmentation model on one process:

* ``torchvision``: pytorch/vision ``references/segmentation`` (``train.py`` + ``presets.py``).
  SGD, momentum 0.9, poly(0.9) decay of the LR by iteration over all epochs (no warm-up, the
  script's default), plain cross-entropy ignoring label 255, ``out + 0.5 * aux`` and the
  auxiliary classifier at 10x the LR where the model has one, training transform
  ``RandomResize(0.5 * base, 2.0 * base)`` of the shorter side + ``RandomHorizontalFlip(0.5)``
  + ``RandomCrop`` (padding image 0 / target 255 when smaller) + ImageNet normalisation;
  evaluation resizes the shorter side to the base size, batch 1. LR and weight decay are the
  README's command for the model (``lraspp_mobilenet_v3_large``: the default LR 0.01 and
  ``--wd 0.000001``; the DeepLabV3 / FCN ResNets: ``--lr 0.02``, default weight decay 1e-4),
  tuned for 8 GPUs x batch 4 = 32; ``--amp`` as its ``--amp`` flag.
* ``mmseg``: MMSegmentation's DeepLabV3+ 80k-iteration schedule (``schedule_80k.py``,
  ``deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py``): SGD lr 0.01, momentum 0.9,
  weight decay 5e-4, ``PolyLR`` power 0.9 with ``eta_min`` 1e-4 by iteration, tuned for 4 GPUs
  x batch 2 = 8; the 80k-iteration shape is stretched over this run's iterations. Its data
  pipeline: ``RandomResize`` ratio 0.5-2.0 of the base scale keeping the aspect ratio,
  ``RandomCrop`` with ``cat_max_ratio=0.75`` (up to 10 tries for a crop no single class fills
  more than 75% of), ``RandomFlip(0.5)``, ``PhotoMetricDistortion``, padding to the crop
  (0 / 255); auxiliary FCN head loss weight 0.4 where the model has one; evaluation at the
  base scale, batch 1.

Both scale the LR (and MMSeg's ``eta_min``) linearly with the global batch (Goyal et al.,
2017): ``lr = recipe lr x batch / recipe batch`` (``--lr-scaling none`` keeps the recipe's
value). The base size is the shorter side of ``--size`` (the suite's training resolution), and
the crop is ``--size`` itself, so every trainer of the time-to-accuracy suite pushes the same
pixels per image; the peers' own crops are square (torchvision 480 of a 520 base,
MMSeg 512x1024 of 1024x2048). Models start from random weights (no downloads), data are
decoded per sample with Pillow in ``--workers`` DataLoader processes (their loaders), RGB masks
colour-matched as in ``reference_pipeline.py`` and their void class mapped to 255. Validation
mIoU is the suite's definition (classes that occur, void excluded).

    python benchmarks/peer_recipes.py --recipe torchvision --data-root ../shared/data/camvid_dev --out curve.json

The output is a JSON learning curve in ``reference_pipeline.py``'s format, rewritten
atomically after every epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.models import segmentation  # noqa: E402

from benchmarks.reference_pipeline import (  # noqa: E402
    DEFAULT_DATA_ROOT,
    MEAN,
    PROCESS_START,
    STD,
    Palette,
    encode_mask,
    gather_samples,
    load_palette,
    mean_iou,
    record_epoch,
    seed_worker,
)

IGNORE = 255


@dataclass(frozen=True)
class Recipe:
    """One peer's optimiser, schedule and augmentation, at the global batch it was tuned for."""

    name: str
    lr: float
    batch: int  # global batch the LR was tuned for
    weight_decay: float
    min_lr: float  # poly decay floor (MMSeg's eta_min); torchvision decays to 0
    aux_weight: float  # weight of the auxiliary head's loss, where the model has one
    aux_lr_mult: float  # LR multiplier of the auxiliary head's parameters
    cat_max_ratio: float | None  # MMSeg RandomCrop: redraw crops one class fills beyond this share
    photometric: bool  # MMSeg PhotoMetricDistortion
    momentum: float = 0.9
    power: float = 0.9
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    eval_batch: int = 1


RECIPES = {
    "torchvision": Recipe("torchvision", lr=0.02, batch=32, weight_decay=1e-4, min_lr=0.0, aux_weight=0.5,
                          aux_lr_mult=10.0, cat_max_ratio=None, photometric=False),
    "mmseg": Recipe("mmseg", lr=0.01, batch=8, weight_decay=5e-4, min_lr=1e-4, aux_weight=0.4, aux_lr_mult=1.0,
                    cat_max_ratio=0.75, photometric=True),
}
# torchvision's README commands per model: (LR, weight decay) where they differ from the recipe's, and
# whether the model has an auxiliary classifier.
TORCHVISION_MODELS: dict[str, tuple[dict[str, float], bool]] = {
    "lraspp_mobilenet_v3_large": ({"lr": 0.01, "weight_decay": 1e-6}, False),
    "deeplabv3_mobilenet_v3_large": ({"lr": 0.01, "weight_decay": 1e-6}, True),
    "deeplabv3_resnet50": ({}, True),
    "fcn_resnet50": ({}, True),
}


@dataclass(frozen=True)
class Settings:
    """Everything that defines a peer run (stored in the curve file)."""

    recipe: Recipe
    data_root: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    model: str = "lraspp_mobilenet_v3_large"
    image_size: tuple[int, int] = (180, 240)
    batch_size: int = 4
    epochs: int = 8
    lr: float = 0.0  # after scaling
    min_lr: float = 0.0
    lr_scaling: str = "linear"
    amp: bool = False
    num_workers: int = 2
    frame_stride: int = 1
    seed: int = 1337
    device: str = "cpu"


def model_recipe(recipe: Recipe, model: str) -> Recipe:
    """The recipe with torchvision's README values for ``model`` (other recipes are model-independent)."""
    return replace(recipe, **TORCHVISION_MODELS[model][0]) if recipe.name == "torchvision" else recipe


def scaled_lr(recipe: Recipe, batch: int, scaling: str) -> tuple[float, float]:
    """(LR, poly floor) for a global ``batch``: linear scaling from the recipe's batch, or unchanged."""
    factor = batch / recipe.batch if scaling == "linear" else 1.0
    return recipe.lr * factor, recipe.min_lr * factor


def poly_lr(base: float, floor: float, power: float, step: int, total: int) -> float:
    """MMSeg's PolyLR (torchvision's LambdaLR when ``floor`` is 0): ``(base - floor)(1 - t/T)^p + floor``."""
    return (base - floor) * (1.0 - min(step, total) / total) ** power + floor


def photometric_distortion(image: Image.Image, rng: random.Random) -> Image.Image:
    """MMSeg's PhotoMetricDistortion: brightness, contrast (before or after), saturation, hue, each p=0.5."""
    x = np.asarray(image, dtype=np.float32)
    if rng.randint(0, 1):
        x = np.clip(x + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.randint(0, 1)
    if contrast_first and rng.randint(0, 1):
        x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
    hsv = np.asarray(Image.fromarray(x.astype(np.uint8)).convert("HSV"), dtype=np.float32)
    if rng.randint(0, 1):
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.randint(0, 1):
        # OpenCV's hue runs 0-180 (MMSeg's delta 18 of it); Pillow's 0-256.
        hsv[..., 0] = (hsv[..., 0] + rng.randint(-18, 18) * 256 / 180) % 256
    x = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), dtype=np.float32)
    if not contrast_first and rng.randint(0, 1):
        x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
    return Image.fromarray(x.astype(np.uint8))


def resize(image: Image.Image, mask: np.ndarray, scale: float) -> tuple[Image.Image, np.ndarray]:
    """Both scaled by ``scale`` (aspect kept): bilinear image, nearest mask."""
    w, h = image.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(mask.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.BILINEAR), np.asarray(resized, dtype=np.int64)


def short_side_scale(image: Image.Image, short: int) -> float:
    """torchvision's ``F.resize(img, short)``: the shorter side becomes ``short``."""
    return short / min(image.size)


def fit_scale(image: Image.Image, target: tuple[float, float]) -> float:
    """mmcv's ``rescale_size`` with ``keep_ratio``: the largest scale fitting long and short side of ``target``."""
    w, h = image.size
    return min(max(target) / max(h, w), min(target) / min(h, w))


def pad_to(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to at least ``size``: image with 0, target with the ignore label."""
    ph, pw = max(size[0] - x.shape[-2], 0), max(size[1] - x.shape[-1], 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
    return x, y


def crop_box(y: torch.Tensor, size: tuple[int, int], cat_max_ratio: float | None,
             rng: random.Random) -> tuple[int, int]:
    """Top-left corner of a random crop; with ``cat_max_ratio`` MMSeg's up-to-10 redraws."""
    h, w = y.shape
    for _ in range(10 if cat_max_ratio is not None else 1):
        top, left = rng.randint(0, h - size[0]), rng.randint(0, w - size[1])
        if cat_max_ratio is None:
            break
        counts = torch.bincount(y[top:top + size[0], left:left + size[1]].flatten(), minlength=IGNORE + 1)[:IGNORE]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
            break
    return top, left


class PeerDataset(Dataset):
    """Decodes one frame per access and applies the recipe's train or eval transform."""

    def __init__(self, samples: list[tuple[Path, Path]], palette: Palette, recipe: Recipe,
                 size: tuple[int, int], train: bool) -> None:
        self.samples, self.palette, self.recipe, self.size, self.train = samples, palette, recipe, size, train
        self.base = min(size)  # torchvision's base_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = Image.open(image_path).convert("RGB")
        with Image.open(mask_path) as mask:
            ids = encode_mask(mask.convert("RGB"), self.palette)
        ids[ids == self.palette.void] = IGNORE
        mmseg = self.recipe.name == "mmseg"
        if not self.train:
            scale = fit_scale(image, self.size) if mmseg else short_side_scale(image, self.base)
            image, ids = resize(image, ids, scale)
            return TF.normalize(TF.to_tensor(image), MEAN, STD), torch.from_numpy(ids)
        rng = random  # seeded per worker by seed_worker
        low, high = self.recipe.scale_range
        if mmseg:  # RandomResize(scale, ratio_range, keep_ratio=True)
            ratio = rng.uniform(low, high)
            scale = fit_scale(image, (self.size[0] * ratio, self.size[1] * ratio))
        else:  # T.RandomResize(min_size, max_size) of the shorter side
            scale = short_side_scale(image, rng.randint(int(low * self.base), int(high * self.base)))
        image, ids = resize(image, ids, scale)
        if self.recipe.photometric:
            image = photometric_distortion(image, rng)
        x, y = TF.to_tensor(image), torch.from_numpy(ids)
        if rng.random() < self.recipe.hflip:
            x, y = x.flip(-1), y.flip(-1)
        # torchvision pads the raw image with black (pad_if_smaller, before Normalize); MMSeg's data
        # preprocessor pads the normalised batch with 0.
        if mmseg:
            x = TF.normalize(x, MEAN, STD)
        x, y = pad_to(x, y, self.size)
        top, left = crop_box(y, self.size, self.recipe.cat_max_ratio, rng)
        rows, cols = slice(top, top + self.size[0]), slice(left, left + self.size[1])
        x, y = x[:, rows, cols], y[rows, cols]
        return (x if mmseg else TF.normalize(x, MEAN, STD)), y


def build_model(name: str, num_classes: int) -> tuple[torch.nn.Module, bool]:
    """A torchvision segmentation model from random weights, and whether it has an auxiliary head."""
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(TORCHVISION_MODELS)}")
    has_aux = TORCHVISION_MODELS[name][1]
    kwargs = {"aux_loss": True} if has_aux else {}
    model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return model, has_aux


def param_groups(model: torch.nn.Module, recipe: Recipe, lr: float) -> list[dict]:
    """Backbone + classifier at ``lr``; the auxiliary classifier at the recipe's multiple of it."""
    aux = getattr(model, "aux_classifier", None)
    aux_ids = {id(p) for p in aux.parameters()} if aux is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in aux_ids], "lr": lr, "base_lr": lr}]
    if aux_ids:
        groups.append({"params": list(aux.parameters()), "lr": lr * recipe.aux_lr_mult,
                       "base_lr": lr * recipe.aux_lr_mult})
    return groups


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, palette: Palette, device: torch.device,
             autocast: dict) -> tuple[float, float]:
    """mIoU and pixel accuracy of ``model`` over ``loader`` (void / padding not counted)."""
    k = len(palette.names)
    confusion = torch.zeros(k * k, dtype=torch.int64)
    model.eval()
    for x, y in loader:
        with torch.autocast(**autocast):
            pred = model(x.to(device))["out"].argmax(1).cpu()
        valid = y != IGNORE
        confusion += torch.bincount(y[valid] * k + pred[valid], minlength=k * k)
    model.train()
    return mean_iou(confusion.view(k, k).numpy(), palette.void)


def train(settings: Settings, out: Path, log=print) -> dict:
    """Run the recipe for ``settings.epochs`` epochs, rewriting the curve at ``out`` after each; returns it."""
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    recipe, root, device = settings.recipe, Path(settings.data_root), torch.device(settings.device)
    palette = load_palette(root)
    train_samples = gather_samples(root, settings.train, settings.frame_stride)
    val_samples = gather_samples(root, settings.val, settings.frame_stride)
    common = dict(num_workers=settings.num_workers, persistent_workers=settings.num_workers > 0,
                  worker_init_fn=seed_worker)
    train_loader = DataLoader(PeerDataset(train_samples, palette, recipe, settings.image_size, train=True),
                              batch_size=settings.batch_size, shuffle=True, drop_last=True, **common)
    val_loader = DataLoader(PeerDataset(val_samples, palette, recipe, settings.image_size, train=False),
                            batch_size=recipe.eval_batch, shuffle=False, **common)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_samples)} training frames make no full batch of {settings.batch_size}")
    model, has_aux = build_model(settings.model, len(palette.names))
    model.to(device)
    optimizer = torch.optim.SGD(param_groups(model, recipe, settings.lr), lr=settings.lr,
                                momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = {"device_type": device.type, "dtype": amp_dtype, "enabled": settings.amp}
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and amp_dtype == torch.float16)
    total = len(train_loader) * settings.epochs
    log(f"{recipe.name}: {settings.model}, {len(train_samples)} train / {len(val_samples)} val frames, "
        f"{total} iterations, lr {settings.lr:g} (poly {recipe.power}, floor {settings.min_lr:g}), "
        f"wd {recipe.weight_decay:g}, aux {'x' + str(recipe.aux_weight) if has_aux else 'none'}, "
        f"{'amp ' + str(amp_dtype).removeprefix('torch.') if settings.amp else 'fp32'}")
    curve = {"pipeline": recipe.name, "settings": asdict(settings), "process_start": PROCESS_START,
             "train_frames": len(train_samples), "val_frames": len(val_samples), "iterations": total, "epochs": []}
    step = 0
    model.train()
    for epoch in range(1, settings.epochs + 1):
        start = time.perf_counter()
        loss_sum = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(**autocast):
                output = model(x)
                loss = F.cross_entropy(output["out"], y, ignore_index=IGNORE)
                if has_aux:
                    loss = loss + recipe.aux_weight * F.cross_entropy(output["aux"], y, ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            factor = poly_lr(1.0, settings.min_lr / settings.lr if settings.lr else 0.0, recipe.power, step, total)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            loss_sum += loss.item()
        miou, pixel_acc = validate(model, val_loader, palette, device, autocast)
        train_loss = loss_sum / len(train_loader)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{recipe.name}: training loss is {train_loss} in epoch {epoch}")
        record_epoch(curve, out, recipe.name, epoch, settings.epochs, start, train_loss, miou, pixel_acc, log,
                     lr=optimizer.param_groups[0]["lr"])
    return curve


def parse_args(argv: list[str] | None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(prog="python benchmarks/peer_recipes.py",
                                     description="Train with a peer's recipe and write its learning curve.")
    parser.add_argument("--recipe", required=True, choices=list(RECIPES))
    parser.add_argument("--model", default="lraspp_mobilenet_v3_large", choices=list(TORCHVISION_MODELS))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"dataset in DAVID layout (default: {DEFAULT_DATA_ROOT})")
    parser.add_argument("--train", nargs="+", default=["0001TP", "0006R0"], help="training sequences")
    parser.add_argument("--val", nargs="+", default=["Seq05VD"], help="validation sequences")
    parser.add_argument("--size", type=int, nargs=2, default=[180, 240], metavar=("H", "W"),
                        help="crop size; its shorter side is the base size (default 180 240)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr-scaling", choices=["linear", "none"], default="linear",
                        help="scale the recipe's LR with batch / recipe batch (default) or keep it")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    parser.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame (quick runs)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="learning-curve JSON to write")
    args = parser.parse_args(argv)
    if min(args.epochs, args.frame_stride, args.batch_size, *args.size) < 1:
        parser.error("--epochs, --frame-stride, --batch-size and --size must be at least 1")
    recipe = model_recipe(RECIPES[args.recipe], args.model)
    lr, min_lr = scaled_lr(recipe, args.batch_size, args.lr_scaling)
    return Settings(recipe, str(args.data_root.resolve()), tuple(args.train), tuple(args.val), model=args.model,
                    image_size=tuple(args.size), batch_size=args.batch_size, epochs=args.epochs, lr=lr,
                    min_lr=min_lr, lr_scaling=args.lr_scaling, amp=args.amp, num_workers=args.workers,
                    frame_stride=args.frame_stride, seed=args.seed, device=args.device), args.out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse_args(argv)
    curve = train(settings, out, log=lambda m: print(m, flush=True))
    print(json.dumps({"final_mIoU": curve["final_mIoU"], "wall_s": curve["epochs"][-1]["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
