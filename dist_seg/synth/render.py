"""Drawing one frame of a scene: per-pixel instances and texture coordinates, then the camera image.

Labels come from the instance map; the image from the same drawing with per-class base
colours, world-anchored textures, per-instance colours, lighting and sensor noise, so a
network has to learn the classes rather than read them off the pixel colour. Everything
is vectorised over pixels; the only Python loops run over a few dozen objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from .scene import (
    ASPHALT,
    BRICKS,
    FACADE,
    FAR,
    FOLIAGE,
    NEAR,
    PLAIN,
    ROLE_ID,
    SKY,
    SLATS,
    TILES,
    Facade,
    Lighting,
    Prop,
    Scene,
)

# ----------------------------------------------------------------------------- drawing


@dataclass
class _Canvas:
    """Per-pixel instance ids and world-anchored texture coordinates, plus the instance table."""

    height: int
    width: int
    inst: np.ndarray = field(init=False)
    u: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)
    roles: list[int] = field(default_factory=list)
    colors: list[tuple[float, float, float]] = field(default_factory=list)
    materials: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inst = np.zeros((self.height, self.width), dtype=np.uint16)
        self.u = np.zeros((self.height, self.width), dtype=np.float32)
        self.v = np.zeros((self.height, self.width), dtype=np.float32)

    def new(self, role: str | int, color: Sequence[float], material: int = PLAIN) -> int:
        """Register a drawable instance (one colour, one material) and return its id."""
        self.roles.append(ROLE_ID[role] if isinstance(role, str) else int(role))
        self.colors.append(tuple(color))
        self.materials.append(material)
        return len(self.roles) - 1

    def paint(self, rows: slice, cols: slice, mask: np.ndarray | None, inst: int | np.ndarray,
              u: np.ndarray | float, v: np.ndarray | float) -> None:
        """Set instance ids and texture coordinates where ``mask`` is true inside ``rows x cols``."""
        region = self.inst[rows, cols]
        if mask is None:
            region[...] = inst
            self.u[rows, cols] = u
            self.v[rows, cols] = v
            return
        if not mask.any():
            return
        shape = mask.shape
        region[mask] = np.broadcast_to(inst, shape)[mask] if isinstance(inst, np.ndarray) else inst
        self.u[rows, cols][mask] = np.broadcast_to(np.asarray(u, dtype=np.float32), shape)[mask]
        self.v[rows, cols][mask] = np.broadcast_to(np.asarray(v, dtype=np.float32), shape)[mask]


@dataclass(frozen=True)
class _View:
    """The camera projected onto an image of a given size at one frame."""

    h: int
    w: int
    horizon: float  # pixels
    vp_x: float
    focal: float
    cam_height: float
    cam_z: float
    xs: np.ndarray  # pixel centre x
    ys: np.ndarray  # pixel centre y

    def row_of_elevation(self, elevation: float | np.ndarray, depth: float | np.ndarray) -> float | np.ndarray:
        """Image row of a point ``elevation`` metres above the road, ``depth`` metres ahead."""
        return self.horizon - self.focal * (elevation - self.cam_height) / depth


@dataclass(frozen=True)
class _Box:
    rows: slice
    cols: slice
    ux: np.ndarray  # [1, cols] 0..1 left to right
    vy: np.ndarray  # [rows, 1] 0..1 top to bottom


def _project_box(view: _View, x: float, depth: float, width: float, bottom: float, top: float) -> _Box | None:
    """Screen rectangle of a world box facing the camera; at least one pixel in each direction."""
    xc = view.vp_x + view.focal * x / depth
    half = max(0.5, 0.5 * view.focal * width / depth)
    y_top, y_bot = view.row_of_elevation(top, depth), view.row_of_elevation(bottom, depth)
    if y_bot - y_top < 1.0:
        y_mid = 0.5 * (y_top + y_bot)
        y_top, y_bot = y_mid - 0.5, y_mid + 0.5
    c0, c1 = max(0, math.floor(xc - half + 0.5)), min(view.w, math.ceil(xc + half - 0.5))
    r0, r1 = max(0, math.floor(y_top + 0.5)), min(view.h, math.ceil(y_bot - 0.5))
    if c1 <= c0 or r1 <= r0:
        return None
    ux = np.clip((view.xs[c0:c1] - (xc - half)) / (2 * half), 0.0, 1.0)[None, :]
    vy = np.clip((view.ys[r0:r1] - y_top) / (y_bot - y_top), 0.0, 1.0)[:, None]
    return _Box(slice(r0, r1), slice(c0, c1), ux.astype(np.float32), vy.astype(np.float32))


def _draw_sky(canvas: _Canvas, scene: Scene, view: _View) -> None:
    k = canvas.new("void", scene.sky_color, SKY)
    canvas.paint(slice(None), slice(None), None, k, (view.xs / view.w)[None, :],
                 ((view.horizon - view.ys) / max(view.horizon, 1.0))[:, None])


def _draw_ground(canvas: _Canvas, scene: Scene, view: _View) -> None:
    y0 = int(np.searchsorted(view.ys, view.horizon + 1e-3, side="right"))
    if y0 >= view.h:
        return
    depth = view.focal * view.cam_height / (view.ys[y0:] - view.horizon)  # [rows] metres ahead
    x = (view.xs - view.vp_x).astype(np.float32)[None, :] * (depth / view.focal).astype(np.float32)[:, None]
    z = (depth + view.cam_z)[:, None]
    road = (x >= scene.road_left) & (x <= scene.road_right)
    sidewalk = (x >= scene.road_left - scene.sidewalk_left) & (x <= scene.road_right + scene.sidewalk_right)
    k_road = canvas.new("road", scene.road_color, ASPHALT)
    k_side = canvas.new("sidewalk", scene.sidewalk_color, TILES)
    k_grass = canvas.new("vegetation", scene.grass_color, FOLIAGE)
    inst = np.where(road, k_road, np.where(sidewalk, k_side, k_grass)).astype(np.uint16)
    for line in scene.lines:
        on_line = np.abs(x - line.x) < 0.5 * line.width
        if line.dashed:
            on_line &= np.mod(z, 9.0) < 3.0
        inst[on_line] = canvas.new("road_line", line.color)
    canvas.paint(slice(y0, None), slice(None), None, inst, x, z)


def _draw_facade(canvas: _Canvas, facade: Facade, view: _View) -> None:
    dx = view.xs - view.vp_x
    if facade.x > 0:
        c0 = int(np.searchsorted(dx, 0.0, side="right"))
        cols = slice(c0, view.w)
    else:
        cols = slice(0, int(np.searchsorted(dx, 0.0, side="left")))
    dx = np.abs(dx[cols])
    if dx.size == 0:
        return
    depth = view.focal * abs(facade.x) / dx
    z = depth + view.cam_z
    seg = np.clip(np.searchsorted(facade.starts, z, side="right") - 1, 0, len(facade.starts) - 1)
    height = facade.heights[seg]
    # Tree tops are irregular; the bumps are anchored to the world so they travel with it.
    bump = (0.6 * np.sin(1.7 * z + seg) + 0.4 * np.sin(4.3 * z)) * np.minimum(1.0, 0.25 * height)
    height = np.where(facade.bumpy[seg], height + bump, height)
    top = view.row_of_elevation(height, depth)
    bottom = view.row_of_elevation(0.0, depth)
    visible = height > 0
    if not visible.any():
        return
    r0 = max(0, int(np.floor(top[visible].min())))
    r1 = min(view.h, int(np.ceil(bottom[visible].max())) + 1)
    if r1 <= r0:
        return
    ys = view.ys[r0:r1, None]
    mask = (ys >= top[None, :]) & (ys < bottom[None, :]) & visible[None, :]
    segments, first_col = np.unique(seg, return_inverse=True)
    ids = np.array([canvas.new(int(facade.roles[s]), facade.colors[s], int(facade.materials[s])) for s in segments],
                   dtype=np.uint16)
    elevation = view.cam_height + (view.horizon - ys) * (depth / view.focal)[None, :]
    canvas.paint(slice(r0, r1), cols, mask, ids[first_col][None, :], z[None, :], elevation)


def _draw_car(canvas: _Canvas, prop: Prop, box: _Box, t: int) -> None:
    ux, vy = box.ux, box.vy
    inset = 0.08 + 0.14 * np.clip((0.38 - vy) / 0.38, 0.0, 1.0)
    cabin = (vy < 0.38) & (ux > inset) & (ux < 1.0 - inset)
    body = (vy >= 0.38) & (vy < 0.88)
    wheels = (vy >= 0.88) & ((ux < 0.22) | (ux > 0.78))
    window = cabin & (vy > 0.06) & (ux > inset + 0.05) & (ux < 0.95 - inset)
    lights = body & (vy > 0.45) & (vy < 0.58) & ((ux < 0.14) | (ux > 0.86))
    lamp = (235, 230, 200) if prop.variant else (210, 40, 30)
    u, v = ux * prop.width, (1.0 - vy) * prop.height
    for mask, color in ((cabin | body, prop.colors[0]), (window, (70, 88, 112)), (wheels, (22, 22, 24)),
                        (lights, lamp)):
        canvas.paint(box.rows, box.cols, mask, canvas.new("car", color), u, v)


def _draw_pedestrian(canvas: _Canvas, prop: Prop, box: _Box, t: int) -> None:
    ux, vy = box.ux, box.vy
    skin, shirt, trousers = prop.colors
    head = ((ux - 0.5) / 0.2) ** 2 + ((vy - 0.07) / 0.07) ** 2 <= 1.0
    torso = (vy >= 0.13) & (vy < 0.56) & (np.abs(ux - 0.5) < 0.36)
    stride = 0.06 + 0.14 * abs(math.sin(prop.phase + 0.9 * t))  # the legs swing as it walks
    legs = (vy >= 0.56) & ((np.abs(ux - 0.5 + stride) < 0.13) | (np.abs(ux - 0.5 - stride) < 0.13))
    u, v = ux * prop.width, (1.0 - vy) * prop.height
    for mask, color in ((head, skin), (torso, shirt), (legs, trousers)):
        canvas.paint(box.rows, box.cols, mask, canvas.new("pedestrian", color), u, v)


def _draw_pole(canvas: _Canvas, prop: Prop, box: _Box, t: int) -> None:
    canvas.paint(box.rows, box.cols, None, canvas.new("pole", (176, 178, 182)), box.ux * prop.width,
                 (1.0 - box.vy) * prop.height)


def _draw_sign(canvas: _Canvas, prop: Prop, box: _Box) -> None:
    ux, vy = box.ux, box.vy
    if prop.variant == 1:  # round
        r2 = (ux - 0.5) ** 2 + (vy - 0.5) ** 2
        shape, inner = r2 <= 0.25, r2 <= 0.12
    elif prop.variant == 2:  # triangle, point up
        shape = (vy >= 2.0 * np.abs(ux - 0.5)) & (vy <= 0.95)
        inner = (vy >= 2.0 * np.abs(ux - 0.5) + 0.3) & (vy <= 0.82)
    else:  # square
        shape = np.ones(np.broadcast_shapes(ux.shape, vy.shape), dtype=bool)
        inner = (np.abs(ux - 0.5) < 0.33) & (np.abs(vy - 0.5) < 0.33)
    for mask, color in ((shape, prop.colors[0]), (inner, (236, 236, 230))):
        canvas.paint(box.rows, box.cols, mask, canvas.new("traffic_sign", color), ux, 1.0 - vy)


def _draw_other(canvas: _Canvas, prop: Prop, box: _Box, t: int) -> None:
    ux, vy = box.ux, box.vy
    if prop.variant == 0:  # a crate or cabinet
        shape = np.ones(np.broadcast_shapes(ux.shape, vy.shape), dtype=bool)
    else:  # a bin with a rounded lid
        shape = (vy >= 0.15) | (((ux - 0.5) / 0.5) ** 2 + ((vy - 0.15) / 0.15) ** 2 <= 1.0)
    canvas.paint(box.rows, box.cols, shape, canvas.new("other", prop.colors[0]), ux * prop.width,
                 (1.0 - vy) * prop.height)


_DRAW_PROP: dict[str, Callable[[_Canvas, Prop, _Box, int], None]] = {
    "car": _draw_car, "pedestrian": _draw_pedestrian, "pole": _draw_pole, "other": _draw_other,
}


def _draw_props(canvas: _Canvas, scene: Scene, view: _View, t: int) -> None:
    placed = []
    for prop in scene.props:
        depth = prop.z + prop.speed * t - view.cam_z
        if NEAR < depth < FAR:
            placed.append((depth, prop))
    placed.sort(key=lambda dp: -dp[0])  # far to near: nearer objects cover farther ones
    for depth, prop in placed:
        box = _project_box(view, prop.x, depth, prop.width, 0.0, prop.height)
        if box is not None:
            _DRAW_PROP[prop.kind](canvas, prop, box, t)
        if prop.kind == "pole" and prop.variant:
            size = 0.75
            sign = _project_box(view, prop.x, depth, size, prop.height - size - 0.1, prop.height - 0.1)
            if sign is not None:
                _draw_sign(canvas, prop, sign)


def _render_layout(scene: Scene, h: int, w: int, t: int) -> _Canvas:
    cam = scene.camera
    view = _View(h, w, cam.horizon * h, cam.vp_x * w, cam.focal * w, cam.height, cam.speed * t,
                 np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
    canvas = _Canvas(h, w)
    _draw_sky(canvas, scene, view)
    _draw_ground(canvas, scene, view)
    for facade in scene.facades:
        _draw_facade(canvas, facade, view)
    _draw_props(canvas, scene, view, t)
    return canvas


# ----------------------------------------------------------------------------- image


def _cell_noise(u: np.ndarray, v: np.ndarray, scale: float, salt: int) -> np.ndarray:
    """Hash of the world-space cell containing (u, v): a value in [0, 1) fixed to the world."""
    iu = np.floor(u * np.float32(scale)).astype(np.int32).view(np.uint32)
    iv = np.floor(v * np.float32(scale)).astype(np.int32).view(np.uint32)
    h = (iu * np.uint32(0x9E3779B1)) ^ (iv * np.uint32(0x85EBCA77)) ^ np.uint32((salt * 0x27D4EB2F) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(13)
    return h.astype(np.float32) * np.float32(1.0 / 2**32)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _tex_asphalt(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return rgb * (0.86 + 0.28 * _cell_noise(u, v, 10.0, 1))[:, None]


def _tex_tiles(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    grout = (_frac(u / 0.6) < 0.07) | (_frac(v / 0.6) < 0.07)
    shade = np.where(grout, 0.7, 0.9 + 0.2 * _cell_noise(u, v, 1 / 0.6, 2))
    return rgb * shade[:, None]


def _tex_facade(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    col, row = _frac(u / 3.0), _frac(v / 3.2)
    window = (col > 0.25) & (col < 0.75) & (row > 0.3) & (row < 0.78) & (v > 1.0)
    out = rgb * (0.92 + 0.16 * _cell_noise(u, v, 2.0, 3))[:, None]
    # Each window pane reflects the sky a little differently.
    reflection = 0.7 + 0.8 * _cell_noise(u[window], v[window], 1 / 3.0, 4)
    out[window] = np.array([52, 66, 88], dtype=np.float32) * reflection[:, None]
    return out


def _tex_bricks(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    course = np.floor(v / 0.25)
    shifted = u + 0.25 * np.mod(course, 2)
    mortar = (_frac(v / 0.25) < 0.14) | (_frac(shifted / 0.5) < 0.07)
    brick = rgb * (0.8 + 0.4 * _cell_noise(shifted, v, 2.0, 5))[:, None]
    return np.where(mortar[:, None], rgb * 0.55 + 90.0, brick)


def _tex_slats(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    gap = (_frac(u / 0.25) < 0.3) & (_frac(v / 1.0) > 0.15)
    return rgb * np.where(gap, 0.45, 1.0 + 0.15 * _cell_noise(u, v, 4.0, 6))[:, None]


def _tex_foliage(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    leaves = 0.55 + 0.55 * _cell_noise(u, v, 3.0, 7) + 0.3 * _cell_noise(u, v, 0.7, 8)
    return rgb * leaves[:, None]


def _tex_sky(rgb: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Paler towards the horizon, with soft banded clouds.
    haze = np.clip(1.0 - v, 0.0, 1.0)[:, None]
    clouds = np.clip(np.sin(7.0 * u + 2.0) * np.sin(9.0 * v + 1.0) - 0.3, 0.0, 1.0)[:, None]
    out = rgb * (0.85 + 0.1 * haze) + 30.0 * haze
    return out + (235.0 - out) * 0.4 * clouds


_GAUSS_LEVELS = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)

_TEXTURES: dict[int, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    ASPHALT: _tex_asphalt, TILES: _tex_tiles, FACADE: _tex_facade, BRICKS: _tex_bricks,
    SLATS: _tex_slats, FOLIAGE: _tex_foliage, SKY: _tex_sky,
}


def _shade(canvas: _Canvas, lighting: Lighting, t: int, rng: np.random.Generator) -> np.ndarray:
    """The RGB image of a drawn frame: base colours, textures, lighting, noise."""
    h, w = canvas.height, canvas.width
    inst = canvas.inst.ravel()
    # The sequence's colour cast goes on the colour table: cheaper than on every pixel.
    rgb = (np.asarray(canvas.colors, dtype=np.float32) * lighting.tint)[inst]
    material = np.asarray(canvas.materials, dtype=np.uint8)[inst]
    u, v = canvas.u.ravel(), canvas.v.ravel()
    for code, texture in _TEXTURES.items():
        idx = np.flatnonzero(material == code)
        if idx.size:
            rgb[idx] = texture(rgb[idx], u[idx], v[idx])
    gain = lighting.gain * (1.0 + lighting.flicker * math.sin(lighting.omega * t + lighting.phase))
    gx = lighting.grad_x * (np.arange(w, dtype=np.float32) / w - 0.5)
    gy = lighting.grad_y * (np.arange(h, dtype=np.float32) / h - 0.5)
    img = rgb.reshape(h, w, 3)
    img *= (np.float32(gain) * (1.0 + gy[:, None] + gx[None, :]))[:, :, None]
    # Gaussian sensor noise through a 256-entry inverse-CDF table: random bytes are several
    # times cheaper to draw than normal variates, and 256 levels are plenty for noise.
    img += (_GAUSS_LEVELS * np.float32(lighting.noise))[rng.integers(0, 256, (h, w, 3), dtype=np.uint8)]
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)



def render_frame(scene: Scene, seed: int, sequence: int, frame: int,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``[H, W, 3]`` and DAVID role ids ``[H, W]`` of one frame."""
    h, w = size
    canvas = _render_layout(scene, h, w, frame)
    roles = np.asarray(canvas.roles, dtype=np.uint8)[canvas.inst]
    image = _shade(canvas, scene.lighting, frame, np.random.default_rng([seed, sequence, 1, frame]))
    return image, roles

