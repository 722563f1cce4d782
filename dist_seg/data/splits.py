"""Split sequences into train / val / test, persist the split, and reuse it on later runs.

Splitting is by sequence, never by frame: consecutive video frames are near duplicates,
so a frame-level split would leak validation data into training. The assignment is a
pure function of the sorted sequence names, ``training.seed`` and the split settings;
it is written to ``<output_dir>/splits.json`` and reused while those inputs are
unchanged, so a run keeps its split even if a later version splits differently.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..config import Config, SplitConfig
from ..errors import ConfigError, DataError
from .discovery import MASK_SUFFIX, DatasetListing, Frame

SPLITS_FILE = "splits.json"
SPLITS_FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSettings:
    """Everything that decides the assignment of sequences to splits."""

    root: str
    test_root: str | None
    seed: int
    val_fraction: float
    test_fraction: float
    val: tuple[str, ...] | None
    test: tuple[str, ...] | None

    @classmethod
    def from_config(cls, cfg: Config) -> SplitSettings:
        ds, split = cfg.dataset, cfg.dataset.split
        return cls(str(Path(ds.root).resolve()), None if ds.test_root is None else str(Path(ds.test_root).resolve()),
                   cfg.training.seed, split.val_fraction, split.test_fraction,
                   None if split.val is None else tuple(split.val), None if split.test is None else tuple(split.test))

    def as_json(self) -> dict:
        """Plain data as stored in splits.json (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class SplitSequence:
    """One sequence in a split, with its frames (image file names) in order."""

    name: str
    root: Path
    image_dir: str  # relative to root, e.g. "Images/Video_000"
    label_dir: str
    frames: tuple[str, ...]
    # Mask file names in frame order, kept only when one is not "<stem>.png" (e.g. ".PNG"):
    # on a case-sensitive disk the name discovery found is the only one that opens.
    masks: tuple[str, ...] = ()

    def frame_records(self) -> list[Frame]:
        """The (image, mask) paths of every frame; masks are ``<label_dir>/<stem>.png`` unless listed."""
        images, labels = self.root / self.image_dir, self.root / self.label_dir
        masks = self.masks or tuple(Path(f).stem + MASK_SUFFIX for f in self.frames)
        return [Frame(self.name, images / f, labels / m) for f, m in zip(self.frames, masks, strict=False)]


@dataclass(frozen=True)
class Splits:
    """The persisted split: which sequences (and frames) are train, val and test."""

    train: tuple[SplitSequence, ...]
    val: tuple[SplitSequence, ...]
    test: tuple[SplitSequence, ...]

    def get(self, split: str) -> tuple[SplitSequence, ...]:
        return getattr(self, split)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{split: (sequences, frames)}``."""
        return {s: (len(self.get(s)), sum(len(q.frames) for q in self.get(s))) for s in SPLIT_NAMES}


# ----------------------------------------------------------------------------- assignment


def _count(total: int, fraction: float, available: int) -> int:
    # At least one sequence for any non-zero fraction (tiny datasets still get validated),
    # but never the last sequence that training needs.
    if fraction <= 0:
        return 0
    return max(0, min(max(1, round(total * fraction)), available - 1))


def _check_named(key: str, wanted: Sequence[str] | None, names: Sequence[str]) -> None:
    for name in wanted or ():
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{key}: {name!r} is not one of the dataset's sequences; {hint}"
                              f"choose from {', '.join(names)} (after dataset.include / exclude)")


def check_split_names(names: Sequence[str], split: SplitConfig, *, test_from_root: bool) -> None:
    """ConfigError naming the key for split settings no assignment of ``names`` can satisfy.

    A val / test name that is not in ``names``, named lists that leave no sequence for
    training, or a test split chosen twice (``dataset.split.test`` and ``dataset.test_root``).
    Needs only the sequence names, so it runs before any frame is read.
    """
    if test_from_root and split.test is not None:
        raise ConfigError("dataset.split.test and dataset.test_root both choose the test split; remove one of them")
    names = sorted(names)
    _check_named("dataset.split.val", split.val, names)
    _check_named("dataset.split.test", split.test, names)
    # Fractions never take the last sequence (see _count): only named lists can leave none.
    if names and set(names) <= set(split.val or ()) | set(split.test or ()):
        raise ConfigError(f"dataset.split: the named val/test lists leave no sequence for training (the dataset has "
                          f"{', '.join(names)}); shorten dataset.split.val / dataset.split.test")


def assign_sequences(names: Sequence[str], split: SplitConfig, seed: int, *,
                     test_from_root: bool) -> dict[str, list[str]]:
    """Assign sequence names to train / val / test.

    Named lists (``split.val`` / ``split.test``) win over fractions; the other split is
    drawn from the remaining sequences in an order shuffled by ``seed``. With
    ``test_from_root`` the test split comes from ``dataset.test_root`` instead.
    """
    names = sorted(names)
    check_split_names(names, split, test_from_root=test_from_root)
    named = set(split.val or ()) | set(split.test or ())
    shuffled = [n for n in names if n not in named]
    random.Random(seed).shuffle(shuffled)

    if split.val is not None:
        val = list(split.val)
    else:
        val = shuffled[:_count(len(names), split.val_fraction, len(shuffled))]
        shuffled = shuffled[len(val):]
    if test_from_root:
        test = []
    elif split.test is not None:
        test = list(split.test)
    else:
        test = shuffled[:_count(len(names), split.test_fraction, len(shuffled))]
    train = [n for n in names if n not in set(val) | set(test)]
    if not train:
        raise ConfigError("dataset.split: the named val/test lists leave no sequence for training; "
                          "shorten dataset.split.val / dataset.split.test")
    return {"train": train, "val": sorted(val), "test": sorted(test)}


def _frames(sequences: Sequence[SplitSequence]) -> int:
    return sum(len(q.frames) for q in sequences)


def fraction_warnings(splits: Splits, split: SplitConfig, *, test_from_root: bool) -> list[str]:
    """Warnings for splits drawn by fraction that took much more than asked from training.

    Fractions round to whole sequences (at least one), so on a dataset of a few sequences a
    10% test split can take a third of the training frames without anyone asking for it.
    """
    drawn = []
    if split.val is None:
        drawn.append(("val", split.val_fraction, splits.val))
    if split.test is None and not test_from_root:
        drawn.append(("test", split.test_fraction, splits.test))
    total = _frames(splits.train) + _frames(splits.val) + (0 if test_from_root else _frames(splits.test))
    warnings = []
    for name, fraction, taken in drawn:
        frames = _frames(taken)
        # Rounding up to whole sequences; half as much again as asked is more than rounding noise.
        if not taken or total == 0 or frames / total <= 1.5 * fraction:
            continue
        lost = frames / (_frames(splits.train) + frames)
        names = ", ".join(f"{q.name} ({len(q.frames)} frames)" for q in taken)
        warnings.append(
            f"splits: dataset.split.{name}_fraction {fraction:g} moved {names} out of training into the {name} "
            f"split: {100 * frames / total:.0f}% of the frames instead of {100 * fraction:.0f}%, and training "
            f"loses {100 * lost:.0f}% of its frames. To keep them, set dataset.split.{name}: [] (no {name} "
            f"split) or name the {name} sequences, or lower dataset.split.{name}_fraction")
    return warnings


# ----------------------------------------------------------------------------- persistence


def splits_path(cfg: Config) -> Path:
    return Path(cfg.training.output_dir) / SPLITS_FILE


def _sequence_json(seq: SplitSequence) -> dict:
    data = {"name": seq.name, "root": str(seq.root), "image_dir": seq.image_dir,
            "label_dir": seq.label_dir, "frames": list(seq.frames)}
    if seq.masks:
        data["masks"] = list(seq.masks)
    return data


def _sequence_from_json(data: dict) -> SplitSequence:
    masks = tuple(data.get("masks", ()))
    if masks and len(masks) != len(data["frames"]):
        raise ValueError(f"sequence {data['name']}: {len(masks)} masks for {len(data['frames'])} frames")
    return SplitSequence(data["name"], Path(data["root"]), data["image_dir"], data["label_dir"],
                         tuple(data["frames"]), masks)


def _load(path: Path) -> dict:
    """The parsed splits.json; ValueError / KeyError / TypeError when it is not one of ours."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"it holds {type(data).__name__}, not a JSON object")
    if data.get("format_version") != SPLITS_FORMAT_VERSION:
        raise ValueError(f"format_version {data.get('format_version')!r}")
    missing = [key for key in ("settings", "sequences", "splits") if not isinstance(data.get(key), dict)]
    if missing:
        raise ValueError(f"no {', '.join(missing)} object")
    for split in SPLIT_NAMES:
        for entry in data["splits"][split]:
            _sequence_from_json(entry)
    return data


def previous_splits(cfg: Config) -> dict | None:
    """The stored ``splits.json`` to reuse; None when there is none or ``training.force_resplit`` is set.

    A damaged file is a DataError naming it and the fix (prepare calls this before the cache build).
    """
    path = splits_path(cfg)
    if cfg.training.force_resplit or not path.exists():
        return None
    try:
        return _load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # It is the record of which sequences were trained on: a new split drawn silently could
        # put trained sequences into validation. The user decides.
        raise DataError(f"{path} is unreadable or damaged ({exc}), so the split it records cannot be reused; "
                        "restore it, or delete it (or set training.force_resplit: true) to draw a new split, "
                        "knowing that sequences trained on before may then become validation or test data") from exc


def _resplit_reason(path: Path, previous: dict | None, force: bool, settings: dict,
                    sequences: dict) -> tuple[str | None, dict | None]:
    """Why the split must be recomputed (None = reuse), and the previous file's data."""
    if force:
        return "training.force_resplit is set", None
    if previous is None:
        return f"no {SPLITS_FILE} yet", None
    if previous["settings"] != settings:
        changed = [k for k in settings if previous["settings"].get(k) != settings[k]]
        return "split settings changed: " + ", ".join(
            f"{k} {previous['settings'].get(k)!r} -> {settings[k]!r}" for k in changed), None
    if previous["sequences"] != sequences:
        old = {n for names in previous["sequences"].values() for n in names}
        new = {n for names in sequences.values() for n in names}
        diff = [f"+{n}" for n in sorted(new - old)] + [f"-{n}" for n in sorted(old - new)]
        return "sequence list changed: " + (" ".join(diff) or "sequences moved between roots"), None
    # A hand-edited file may move sequences between splits, but must not drop or repeat one.
    from_main_root = ("train", "val") if settings["test_root"] else SPLIT_NAMES
    assigned = sorted(e["name"] for split in from_main_root for e in previous["splits"][split])
    if assigned != sorted(sequences["root"]):
        return f"{path} does not assign every sequence exactly once", None
    return None, previous


def _split_sequence(listing: DatasetListing, name: str) -> SplitSequence:
    seq = next(s for s in listing.sequences if s.name == name)
    masks = tuple(f.mask.name for f in seq.frames)
    usual = all(m == f.image.stem + MASK_SUFFIX for m, f in zip(masks, seq.frames, strict=False))
    return SplitSequence(name, listing.root, str(seq.image_dir.relative_to(listing.root)),
                         str(seq.label_dir.relative_to(listing.root)), tuple(f.image.name for f in seq.frames),
                         () if usual else masks)


def _split_inputs(main: DatasetListing, test: DatasetListing | None, cfg: Config) -> tuple[dict, dict]:
    """The settings and sequence lists that decide the split (and are stored with it)."""
    return (SplitSettings.from_config(cfg).as_json(),
            {"root": main.sequence_names, "test_root": test.sequence_names if test else []})


def planned_splits(main: DatasetListing, test: DatasetListing | None, cfg: Config, *,
                   log: Callable[[str], None] = lambda _m: None) -> Splits:
    """The splits :func:`resolve_splits` gives: ``splits.json``'s while still valid, else new; writes nothing.

    ``validate`` uses it to judge the training split before anything is prepared.
    """
    path = splits_path(cfg)
    settings, sequences = _split_inputs(main, test, cfg)
    reason, previous = _resplit_reason(path, previous_splits(cfg), cfg.training.force_resplit, settings, sequences)
    if previous is not None:
        assignment = {s: [e["name"] for e in previous["splits"][s]] for s in SPLIT_NAMES}
        log(f"splits: reusing {path}")
    else:
        assignment = assign_sequences(main.sequence_names, cfg.dataset.split, cfg.training.seed,
                                      test_from_root=test is not None)
        log(f"splits: computed a new split ({reason})")
        if test is not None and cfg.dataset.split.test_fraction > 0:
            log(f"splits: the test split is dataset.test_root ({test.root}); dataset.split.test_fraction is unused")

    def build(split: str) -> tuple[SplitSequence, ...]:
        if split == "test" and test is not None:
            return tuple(_split_sequence(test, n) for n in test.sequence_names)
        return tuple(_split_sequence(main, n) for n in assignment[split])

    return Splits(build("train"), build("val"), build("test"))


def resolve_splits(main: DatasetListing, test: DatasetListing | None, cfg: Config, *,
                   log: Callable[[str], None] = print) -> Splits:
    """Reuse ``<output_dir>/splits.json`` when still valid, else compute and write it (atomically).

    Frame lists always come from ``main`` / ``test``; the file is rewritten only when its
    content changes, so concurrent callers with the same inputs write identical bytes.
    """
    splits = planned_splits(main, test, cfg, log=log)
    for warning in fraction_warnings(splits, cfg.dataset.split, test_from_root=test is not None):
        log(f"WARNING: {warning}")
    if not splits.val:
        log("splits: no validation sequences (a single sequence, or val_fraction 0): "
            "validation and visualization will be skipped")
    settings, sequences = _split_inputs(main, test, cfg)
    text = json.dumps({"format_version": SPLITS_FORMAT_VERSION, "settings": settings, "sequences": sequences,
                       "splits": {s: [_sequence_json(q) for q in splits.get(s)] for s in SPLIT_NAMES}},
                      indent=2) + "\n"
    path = splits_path(cfg)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic.write_text(path, text)
    return splits


def read_splits(cfg: Config) -> Splits:
    """Load splits.json for the current config; DataError with the fix if missing or outdated."""
    path = splits_path(cfg)
    fix = "run python -m dist_seg.prepare CONFIG (training runs it for you) with this config"
    if not path.exists():
        raise DataError(f"{path} does not exist: {fix}")
    try:
        data = _load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is damaged ({exc}): {fix}") from exc
    if data["settings"] != SplitSettings.from_config(cfg).as_json():
        raise DataError(f"{path} was made with other split settings than this config: {fix}")
    return Splits(*(tuple(_sequence_from_json(e) for e in data["splits"][s]) for s in SPLIT_NAMES))
