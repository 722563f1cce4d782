"""evaluate --root reads masks in the format the checkpoint was trained with, not the one the file mode suggests."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from support.helpers import save_model_checkpoint, tiny_raw_config

from dist_seg.config import config_from_dict
from dist_seg.evaluate import main as evaluate_main
from dist_seg.models import build_model

LINEAR = "fixtures_custom_model:LinearPixelNet"


def test_grey_scale_rgb_format_masks_keep_their_white_class(tmp_path, capsys):
    """Black/white classes saved as mode-L PNGs: white (255) is the class 'lane', not 'ignore'."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for seq in ("Video_000", "Video_001"):
        (root / "Images" / seq).mkdir(parents=True)
        (root / "Labels" / seq).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "Images" / seq / f"{i}.png")
            mask = np.zeros((24, 32), dtype=np.uint8)
            mask[:, 16:] = 255
            Image.fromarray(mask, mode="L").save(root / "Labels" / seq / f"{i}.png")
    raw = tiny_raw_config(root, tmp_path / "run")
    raw["dataset"]["classes"] = [{"name": "background", "color": [0, 0, 0]}, {"name": "lane", "color": [255, 255, 255]}]
    raw["dataset"]["split"] = {"val": [], "test": []}
    raw["model"] = {"type": LINEAR}
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, 2)
    ckpt = save_model_checkpoint(model, cfg, tmp_path / "run")
    out = tmp_path / "report"
    assert evaluate_main(["--checkpoint", str(ckpt), "--root", str(root), "--out", str(out), "--device", "cpu",
                          "--workers", "0", "--custom-model", LINEAR, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "look like index masks, but the checkpoint's dataset.mask_format is rgb" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["mask_format"] == "rgb"
    assert sum(report["confusion"][1]) == 4 * 24 * 16  # every white pixel scored as 'lane'
