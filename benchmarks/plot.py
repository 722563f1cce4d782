"""A line chart drawn with Pillow (matplotlib is not a dependency): learning curves over wall-clock time."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from dist_seg import atomic

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
SIZE = (800, 500)
MARGIN = (70, 40, 30, 60)  # left, top, right, bottom


def _ticks(top: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values from 0 to at least ``top``."""
    raw = top / count if top > 0 else 1.0
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def line_chart(path: Path, series: dict[str, list[tuple[float, float]]], *, title: str, x_label: str,
               y_label: str, hlines: dict[str, float] | None = None) -> None:
    """Write a PNG with one polyline (and dots) per series and dashed horizontal reference lines."""
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]
    points = [p for values in series.values() for p in values]
    x_ticks = _ticks(max([x for x, _ in points] + [1e-9]))
    y_ticks = _ticks(max([y for _, y in points] + list((hlines or {}).values()) + [1e-9]))
    x_max, y_max = x_ticks[-1], y_ticks[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * y / y_max

    for x in x_ticks:
        px, _ = at(x, 0)
        draw.line([(px, top), (px, bottom)], fill=(230, 230, 230))
        draw.text((px, bottom + 5), f"{x:g}", fill="black", anchor="ma")
    for y in y_ticks:
        _, py = at(0, y)
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        draw.text((left - 5, py), f"{y:g}", fill="black", anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, SIZE[1] - 20), x_label, fill="black", anchor="ma")
    draw.text((10, top - 25), y_label, fill="black")
    draw.text(((left + right) / 2, 10), title, fill="black", anchor="ma")
    legend_y = top + 8
    colour = (120, 120, 120)
    for name, value in (hlines or {}).items():
        _, py = at(0, value)
        for x0 in range(left, right, 12):
            draw.line([(x0, py), (min(x0 + 6, right), py)], fill=colour, width=1)
        draw.text((left + 8, py - 14), f"{name} {value:.3f}", fill=colour)
    for (name, values), colour in zip(series.items(), COLOURS, strict=False):
        xy = [at(x, y) for x, y in values]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.line([(right - 170, legend_y + 6), (right - 150, legend_y + 6)], fill=colour, width=3)
        draw.text((right - 145, legend_y), name, fill="black")
        legend_y += 16
    with atomic.atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")
