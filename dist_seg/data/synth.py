"""Synthetic DAVID-style driving sequences drawn with numpy.

Each sequence is a street seen from a car driving forward: a perspective road with lane
lines, sidewalks, building / wall / fence / hedge façades with a second row of buildings
and trees behind them, poles carrying traffic signs, cars, pedestrians and "other" street
furniture. The scene lives in world coordinates (metres; the camera at lateral 0, its
forward position ``z`` growing by ``speed`` each frame), so consecutive frames show the same
world from a little further on: objects grow and move outward and down, lane dashes scroll.

Labels use the exact palette colours (or class ids). Images are derived from the same
drawing but with their own per-class base colours, world-anchored textures (windows,
bricks, tiles, foliage), per-instance colours (car paint, clothes), lighting that varies
per sequence and over time, and sensor noise, so a network has to learn the classes
rather than read them off the pixel colour.

Everything is vectorised over pixels; the only Python loops run over a few dozen objects.
A sequence's world depends on ``(seed, sequence)`` only, never on the image size, and is
drawn from prefix-stable random streams: a longer sequence starts with the frames of a
shorter one.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
from PIL import Image

from ..atomic import write_bytes
from ..config import DAVID_CLASSES, ClassSpec
from .discovery import IMAGE_SUFFIXES

# Drawing roles are DAVID's class names; a custom class list is mapped onto them by name.
ROLES: tuple[str, ...] = tuple(c.name for c in DAVID_CLASSES)
_ROLE = {name: i for i, name in enumerate(ROLES)}

MIN_SIZE = 16

# Image materials: how a region's base colour is textured (see _TEXTURES).
_PLAIN, _ASPHALT, _TILES, _FACADE, _BRICKS, _SLATS, _FOLIAGE, _SKY = range(8)

# Objects are drawn between these depths (metres): nearer ones are behind the lens, farther
# ones sub-pixel. The world is generated this far beyond the camera's path.
_FAR = 250.0
_NEAR = 1.0


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote."""

    root: Path
    sequences: int
    frames: int  # per sequence
    size: tuple[int, int]  # (H, W)
    mask_format: str
    class_pixel_counts: dict[str, int]

    @property
    def total_frames(self) -> int:
        return self.sequences * self.frames

    def describe(self) -> str:
        """One paragraph for humans: what was written where, and the class balance."""
        total = max(1, sum(self.class_pixel_counts.values()))
        shares = sorted(self.class_pixel_counts.items(), key=lambda kv: -kv[1])
        balance = ", ".join(f"{name} {100.0 * n / total:.1f}%" for name, n in shares)
        h, w = self.size
        return (
            f"Wrote {self.sequences} sequence(s) x {self.frames} frame(s) = {self.total_frames} frames of "
            f"{h}x{w} (HxW) to {self.root} (Images/Video_XXX/vXXX_YYYY, Labels/... as {self.mask_format} masks). "
            f"Class pixel shares: {balance}."
        )


@dataclass(frozen=True)
class _Camera:
    horizon: float  # fraction of the image height
    vp_x: float  # vanishing point, fraction of the image width
    focal: float  # focal length, fraction of the image width
    height: float  # metres above the road
    speed: float  # metres per frame


@dataclass(frozen=True)
class _Facade:
    """A vertical plane parallel to the road at lateral ``x``, cut into segments along z."""

    x: float
    starts: np.ndarray  # segment start z, ascending
    roles: np.ndarray
    heights: np.ndarray  # 0 = gap
    colors: np.ndarray  # [n, 3]
    materials: np.ndarray
    bumpy: np.ndarray  # foliage: irregular top edge


@dataclass(frozen=True)
class _LaneLine:
    x: float
    width: float
    dashed: bool
    color: tuple[float, float, float]


@dataclass(frozen=True)
class _Prop:
    """A street object standing on the ground at (x, z + speed * t)."""

    kind: Literal["car", "pedestrian", "pole", "other"]
    x: float
    z: float
    speed: float  # own motion along z, metres per frame
    width: float
    height: float
    colors: tuple[tuple[float, float, float], ...]  # kind-specific parts
    variant: int = 0  # sign shape / furniture shape / oncoming car
    phase: float = 0.0  # pedestrian gait


@dataclass(frozen=True)
class _Lighting:
    gain: float
    flicker: float  # relative amplitude of the slow gain change over time
    omega: float  # radians per frame
    phase: float
    tint: np.ndarray  # [3]
    grad_x: float
    grad_y: float
    noise: float  # sensor noise sigma, 0..255 scale


@dataclass(frozen=True)
class _Scene:
    camera: _Camera
    road_left: float
    road_right: float
    sidewalk_left: float
    sidewalk_right: float
    lines: tuple[_LaneLine, ...]
    facades: tuple[_Facade, ...]  # back rows first: painter's order
    props: tuple[_Prop, ...]
    lighting: _Lighting
    road_color: tuple[float, float, float]
    sidewalk_color: tuple[float, float, float]
    grass_color: tuple[float, float, float]
    sky_color: tuple[float, float, float]


# ----------------------------------------------------------------------------- world


_BUILDING_COLORS = ((168, 124, 100), (170, 152, 128), (140, 132, 126), (156, 112, 90), (178, 160, 136))
_CAR_COLORS = ((196, 32, 36), (36, 64, 158), (228, 228, 232), (34, 34, 38), (150, 152, 156), (206, 164, 42),
               (40, 110, 70))
_CLOTHES = ((40, 44, 90), (150, 40, 40), (220, 210, 190), (30, 30, 30), (70, 120, 60), (200, 140, 40))
_SIGN_COLORS = ((200, 30, 30), (30, 70, 175), (230, 190, 30))
_FURNITURE_COLORS = ((60, 100, 70), (170, 120, 64), (74, 74, 80), (210, 90, 30))


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float = 12.0) -> tuple[float, float, float]:
    c = np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    return options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class _SegmentKind:
    """One kind of façade segment: its class, size ranges (metres), look."""

    role: str
    length: tuple[float, float]
    height: tuple[float, float]
    colors: tuple[tuple[int, int, int], ...]
    material: int = _PLAIN
    jitter: float = 12.0


_FRONT_ROW = (
    _SegmentKind("building", (8, 20), (8, 30), _BUILDING_COLORS, _FACADE),
    _SegmentKind("wall", (4, 10), (1.8, 3.2), ((150, 132, 110),), _BRICKS),
    _SegmentKind("fence", (4, 10), (1.2, 2.0), ((120, 92, 64),), _SLATS),
    _SegmentKind("vegetation", (4, 12), (2, 12), ((58, 112, 44),), _FOLIAGE, jitter=10.0),
    _SegmentKind("void", (3, 8), (0, 0), ((0, 0, 0),)),  # a gap: zero height shows the row behind
)
_BACK_ROW = (
    _SegmentKind("building", (10, 30), (8, 30), _BUILDING_COLORS, _FACADE),
    _SegmentKind("vegetation", (8, 25), (2, 12), ((58, 112, 44),), _FOLIAGE, jitter=10.0),
)


def _make_facade(rng: np.random.Generator, x: float, z_end: float, kinds: Sequence[_SegmentKind]) -> _Facade:
    """Segments along z up to ``z_end``, in shuffled blocks that hold every kind once.

    Blocks (rather than independent draws) keep every kind within a few dozen metres, so
    each class shows up in most frames.
    """
    starts, roles, heights, colors, materials, bumpy = [], [], [], [], [], []
    z = -20.0
    while z < z_end:
        for i in rng.permutation(len(kinds)):
            kind = kinds[i]
            starts.append(z)
            roles.append(_ROLE[kind.role])
            heights.append(rng.uniform(*kind.height))
            colors.append(_jitter(rng, _pick(rng, kind.colors), kind.jitter))
            materials.append(kind.material)
            bumpy.append(kind.material == _FOLIAGE)
            z += rng.uniform(*kind.length)
    return _Facade(x, np.array(starts), np.array(roles, dtype=np.uint8), np.array(heights),
                   np.array(colors, dtype=np.float32), np.array(materials, dtype=np.uint8), np.array(bumpy))


def _spaced(rng: np.random.Generator, z0: float, z_end: float, mean_gap: float, min_gap: float) -> Iterator[float]:
    """Positions along z with random gaps, drawn lazily.

    The caller draws each object's attributes from the same ``rng`` between positions, so
    a larger ``z_end`` only appends objects and never changes the earlier ones.
    """
    z = z0 + rng.uniform(0, mean_gap)
    while z < z_end:
        yield z
        z += min_gap + rng.exponential(mean_gap - min_gap)


def _make_props(stream: Callable[..., np.random.Generator], scene_edges: tuple[float, float, float, float],
                lanes: int, lane_w: float, speed: float, z_end: float) -> list[_Prop]:
    """Cars in the lanes, poles with signs, pedestrians and furniture on both sidewalks.

    Each lane and each sidewalk kind draws from its own stream, so extending ``z_end`` (a
    longer sequence) appends objects without moving the earlier ones.
    """
    road_left, road_right, side_left, side_right = scene_edges
    props: list[_Prop] = []
    # Cars. Lane i (0 = the camera's) is centred at -i * lane_w; lanes >= `lanes` are oncoming.
    for lane in range(2 * lanes):
        rng = stream(lane)
        oncoming = lane >= lanes
        x = -lane * lane_w
        if lane == 0:
            # A lead car keeps its distance: the camera follows it.
            zs = [rng.uniform(9, 28)] if rng.random() < 0.6 else []
        else:
            zs = _spaced(rng, 4.0, z_end, 28.0, 8.0)
        for z in zs:
            car_speed = -speed * rng.uniform(0.6, 1.0) if oncoming else (
                speed if lane == 0 else speed * rng.uniform(0.5, 0.95))
            van = rng.random() < 0.2
            props.append(_Prop("car", x + rng.uniform(-0.3, 0.3), z, car_speed,
                               rng.uniform(1.9, 2.1) if van else rng.uniform(1.7, 1.9),
                               rng.uniform(1.9, 2.3) if van else rng.uniform(1.35, 1.55),
                               (_jitter(rng, _pick(rng, _CAR_COLORS), 8),), variant=int(oncoming)))
    for side, (sign, edge, width) in enumerate(((-1.0, road_left, side_left), (1.0, road_right, side_right))):
        # Poles near the kerb, most of them with a traffic sign.
        rng = stream(10 + side)
        for z in _spaced(rng, -5.0, z_end, 18.0, 8.0):
            has_sign = rng.random() < 0.65
            props.append(_Prop("pole", edge + sign * rng.uniform(0.3, 0.6), z, 0.0, rng.uniform(0.14, 0.22),
                               rng.uniform(3.2, 6.5), (_jitter(rng, _pick(rng, _SIGN_COLORS), 6),),
                               variant=int(rng.integers(1, 4)) if has_sign else 0))
        rng = stream(20 + side)
        for z in _spaced(rng, -5.0, z_end, 12.0, 1.5):
            props.append(_Prop("pedestrian", edge + sign * rng.uniform(0.6, max(0.7, width - 0.5)), z,
                               rng.uniform(-0.15, 0.15), rng.uniform(0.5, 0.6), rng.uniform(1.55, 1.9),
                               (_jitter(rng, (205, 165, 135), 15), _jitter(rng, _pick(rng, _CLOTHES)),
                                _jitter(rng, _pick(rng, _CLOTHES))), phase=rng.uniform(0, math.tau)))
        rng = stream(30 + side)
        for z in _spaced(rng, -5.0, z_end, 16.0, 3.0):
            props.append(_Prop("other", edge + sign * rng.uniform(max(0.6, width - 1.0), max(0.7, width - 0.4)), z,
                               0.0, rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.2),
                               (_jitter(rng, _pick(rng, _FURNITURE_COLORS)),), variant=int(rng.integers(2))))
    return props


def _make_scene(seed: int, sequence: int, frames: int) -> _Scene:
    """The world of one sequence. Independent of the image size."""

    def stream(*salt: int) -> np.random.Generator:
        # [.., 0, ..]: the world's streams; per-frame noise uses [.., 1, frame].
        return np.random.default_rng([seed, sequence, 0, *salt])

    rng = stream(0)
    camera = _Camera(horizon=rng.uniform(0.40, 0.50), vp_x=rng.uniform(0.42, 0.58), focal=rng.uniform(0.45, 0.6),
                     height=rng.uniform(1.3, 1.7), speed=rng.uniform(0.8, 1.6))
    lanes = int(rng.integers(1, 3))
    lane_w = rng.uniform(3.1, 3.8)
    road_right, road_left = lane_w / 2, lane_w / 2 - 2 * lanes * lane_w
    side_left, side_right = rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)
    line_w = rng.uniform(0.14, 0.22)
    centre_color = _pick(rng, ((225, 225, 215), (222, 188, 60)))
    lines = [_LaneLine(road_right - 0.3, line_w, False, (225, 225, 215)),
             _LaneLine(road_left + 0.3, line_w, False, (225, 225, 215))]
    for i in range(1, 2 * lanes):
        centre = i == lanes
        color = centre_color if centre else (225, 225, 215)
        lines.append(_LaneLine(lane_w / 2 - i * lane_w, line_w, not centre, color))
    # Illumination varies between sequences, but not so much that a class's colour moves
    # onto another class's: the images must stay learnable across sequences.
    lighting = _Lighting(gain=rng.uniform(0.88, 1.08), flicker=rng.uniform(0.0, 0.06), omega=rng.uniform(0.05, 0.3),
                         phase=rng.uniform(0, math.tau), tint=(1.0 + rng.normal(0.0, 0.025, 3)).astype(np.float32),
                         grad_x=rng.uniform(-0.15, 0.15), grad_y=rng.uniform(-0.12, 0.12), noise=rng.uniform(4.0, 9.0))
    road_color = _jitter(rng, (84, 84, 90), 5)
    sidewalk_color = _jitter(rng, (186, 186, 182), 6)
    grass_color = _jitter(rng, (86, 128, 50), 6)
    sky_color = _jitter(rng, (150, 186, 226), 6)

    # The camera travels speed * frames; oncoming cars at most as far again towards it.
    z_end = _FAR + 2.0 * camera.speed * frames
    left_x, right_x = road_left - side_left, road_right + side_right
    facades = (
        _make_facade(stream(1), left_x - rng.uniform(6, 15), z_end, _BACK_ROW),
        _make_facade(stream(2), right_x + rng.uniform(6, 15), z_end, _BACK_ROW),
        _make_facade(stream(3), left_x, z_end, _FRONT_ROW),
        _make_facade(stream(4), right_x, z_end, _FRONT_ROW),
    )
    props = _make_props(lambda k: stream(5, k), (road_left, road_right, side_left, side_right), lanes, lane_w,
                        camera.speed, z_end)
    return _Scene(camera, road_left, road_right, side_left, side_right, tuple(lines), facades, tuple(props),
                  lighting, road_color, sidewalk_color, grass_color, sky_color)


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

    def new(self, role: str | int, color: Sequence[float], material: int = _PLAIN) -> int:
        """Register a drawable instance (one colour, one material) and return its id."""
        self.roles.append(_ROLE[role] if isinstance(role, str) else int(role))
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


def _draw_sky(canvas: _Canvas, scene: _Scene, view: _View) -> None:
    k = canvas.new("void", scene.sky_color, _SKY)
    canvas.paint(slice(None), slice(None), None, k, (view.xs / view.w)[None, :],
                 ((view.horizon - view.ys) / max(view.horizon, 1.0))[:, None])


def _draw_ground(canvas: _Canvas, scene: _Scene, view: _View) -> None:
    y0 = int(np.searchsorted(view.ys, view.horizon + 1e-3, side="right"))
    if y0 >= view.h:
        return
    depth = view.focal * view.cam_height / (view.ys[y0:] - view.horizon)  # [rows] metres ahead
    x = (view.xs - view.vp_x).astype(np.float32)[None, :] * (depth / view.focal).astype(np.float32)[:, None]
    z = (depth + view.cam_z)[:, None]
    road = (x >= scene.road_left) & (x <= scene.road_right)
    sidewalk = (x >= scene.road_left - scene.sidewalk_left) & (x <= scene.road_right + scene.sidewalk_right)
    k_road = canvas.new("road", scene.road_color, _ASPHALT)
    k_side = canvas.new("sidewalk", scene.sidewalk_color, _TILES)
    k_grass = canvas.new("vegetation", scene.grass_color, _FOLIAGE)
    inst = np.where(road, k_road, np.where(sidewalk, k_side, k_grass)).astype(np.uint16)
    for line in scene.lines:
        on_line = np.abs(x - line.x) < 0.5 * line.width
        if line.dashed:
            on_line &= np.mod(z, 9.0) < 3.0
        inst[on_line] = canvas.new("road_line", line.color)
    canvas.paint(slice(y0, None), slice(None), None, inst, x, z)


def _draw_facade(canvas: _Canvas, facade: _Facade, view: _View) -> None:
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


def _draw_car(canvas: _Canvas, prop: _Prop, box: _Box, t: int) -> None:
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


def _draw_pedestrian(canvas: _Canvas, prop: _Prop, box: _Box, t: int) -> None:
    ux, vy = box.ux, box.vy
    skin, shirt, trousers = prop.colors
    head = ((ux - 0.5) / 0.2) ** 2 + ((vy - 0.07) / 0.07) ** 2 <= 1.0
    torso = (vy >= 0.13) & (vy < 0.56) & (np.abs(ux - 0.5) < 0.36)
    stride = 0.06 + 0.14 * abs(math.sin(prop.phase + 0.9 * t))  # the legs swing as it walks
    legs = (vy >= 0.56) & ((np.abs(ux - 0.5 + stride) < 0.13) | (np.abs(ux - 0.5 - stride) < 0.13))
    u, v = ux * prop.width, (1.0 - vy) * prop.height
    for mask, color in ((head, skin), (torso, shirt), (legs, trousers)):
        canvas.paint(box.rows, box.cols, mask, canvas.new("pedestrian", color), u, v)


def _draw_pole(canvas: _Canvas, prop: _Prop, box: _Box, t: int) -> None:
    canvas.paint(box.rows, box.cols, None, canvas.new("pole", (176, 178, 182)), box.ux * prop.width,
                 (1.0 - box.vy) * prop.height)


def _draw_sign(canvas: _Canvas, prop: _Prop, box: _Box) -> None:
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


def _draw_other(canvas: _Canvas, prop: _Prop, box: _Box, t: int) -> None:
    ux, vy = box.ux, box.vy
    if prop.variant == 0:  # a crate or cabinet
        shape = np.ones(np.broadcast_shapes(ux.shape, vy.shape), dtype=bool)
    else:  # a bin with a rounded lid
        shape = (vy >= 0.15) | (((ux - 0.5) / 0.5) ** 2 + ((vy - 0.15) / 0.15) ** 2 <= 1.0)
    canvas.paint(box.rows, box.cols, shape, canvas.new("other", prop.colors[0]), ux * prop.width,
                 (1.0 - vy) * prop.height)


_DRAW_PROP: dict[str, Callable[[_Canvas, _Prop, _Box, int], None]] = {
    "car": _draw_car, "pedestrian": _draw_pedestrian, "pole": _draw_pole, "other": _draw_other,
}


def _draw_props(canvas: _Canvas, scene: _Scene, view: _View, t: int) -> None:
    placed = []
    for prop in scene.props:
        depth = prop.z + prop.speed * t - view.cam_z
        if _NEAR < depth < _FAR:
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


def _render_layout(scene: _Scene, h: int, w: int, t: int) -> _Canvas:
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
    _ASPHALT: _tex_asphalt, _TILES: _tex_tiles, _FACADE: _tex_facade, _BRICKS: _tex_bricks,
    _SLATS: _tex_slats, _FOLIAGE: _tex_foliage, _SKY: _tex_sky,
}


def _shade(canvas: _Canvas, lighting: _Lighting, t: int, rng: np.random.Generator) -> np.ndarray:
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


# ----------------------------------------------------------------------------- dataset


def _role_to_class(classes: Sequence[ClassSpec]) -> np.ndarray:
    """Class id of every drawing role in ``classes``, matched by name."""
    names = [c.name for c in classes]
    missing = [r for r in ROLES if r not in names]
    if missing:
        raise ValueError(
            f"the synthetic generator draws DAVID's classes and needs a class named each of {', '.join(ROLES)}; "
            f"missing: {', '.join(missing)}. Rename your classes to DAVID's names (any order and colours) "
            "or generate with the default DAVID class list."
        )
    if len(classes) > 255:
        raise ValueError(f"at most 255 classes fit in uint8 masks, got {len(classes)}")
    return np.array([names.index(r) for r in ROLES], dtype=np.uint8)


def _check_args(sequences: int, frames: int, size: tuple[int, int], seed: int, mask_format: str,
                classes: Sequence[ClassSpec], image_ext: str) -> None:
    if sequences < 1 or frames < 1:
        raise ValueError(f"need at least one sequence and one frame, got sequences={sequences}, frames={frames}")
    if len(size) != 2 or min(size) < MIN_SIZE:
        raise ValueError(f"size must be (H, W) with both at least {MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if mask_format not in ("rgb", "index"):
        raise ValueError(f"mask_format must be 'rgb' or 'index', got {mask_format!r}")
    if image_ext.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"image_ext must be one of {', '.join(IMAGE_SUFFIXES)}, got {image_ext!r}")
    colors = [c.color for c in classes]
    if mask_format == "rgb" and len(set(colors)) != len(colors):
        raise ValueError("two classes share a colour; RGB masks need one colour per class (or use mask_format='index')")


def _png(array: np.ndarray, noisy: bool) -> bytes:
    """PNG bytes of an 8-bit grey ``[H, W]`` or RGB ``[H, W, 3]`` array, fast.

    Rows go unfiltered into zlib at its fastest level: Pillow's adaptive row filter costs
    as much time as the compression and saves little. Noisy camera frames hold few long
    repeats, so run-length matching compresses them about as well, two to three times
    faster; flat label masks keep zlib's default matching, which shrinks them ten times more.
    """
    h, w = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    rows = np.zeros((h, 1 + array[0].size), dtype=np.uint8)  # leading 0 = filter type "none"
    rows[:, 1:] = array.reshape(h, -1)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE if noisy else zlib.Z_DEFAULT_STRATEGY)
    data = compressor.compress(rows.tobytes()) + compressor.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _encode_image(image: np.ndarray, ext: str) -> bytes:
    if ext == ".png":
        return _png(image, noisy=True)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _render(scene: _Scene, seed: int, sequence: int, frame: int,
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``[H, W, 3]`` and DAVID role ids ``[H, W]`` of one frame."""
    h, w = size
    canvas = _render_layout(scene, h, w, frame)
    roles = np.asarray(canvas.roles, dtype=np.uint8)[canvas.inst]
    image = _shade(canvas, scene.lighting, frame, np.random.default_rng([seed, sequence, 1, frame]))
    return image, roles


def generate_dataset(out_dir: Path, sequences: int = 3, frames: int = 8, size: tuple[int, int] = (120, 160),
                     seed: int = 0, mask_format: Literal["rgb", "index"] = "rgb",
                     classes: Sequence[ClassSpec] = DAVID_CLASSES, image_ext: str = ".png") -> SynthSummary:
    """Write a DAVID-layout dataset of synthetic street sequences and return what was written.

    Layout: ``out_dir/Images/Video_SSS/vSSS_FFFF{image_ext}`` and ``out_dir/Labels/Video_SSS/vSSS_FFFF.png``.
    Labels are RGB PNGs in the exact colours of ``classes`` (``mask_format="rgb"``) or
    single-channel PNGs of class ids (``"index"``). ``classes`` must name every DAVID class
    (any order, any colours; extra classes are allowed and simply never drawn). Output is
    byte-identical for the same arguments on the same numpy/zlib/libjpeg. Each file is
    written atomically. Files of an earlier run with more sequences or frames are left alone.
    """
    _check_args(sequences, frames, size, seed, mask_format, classes, image_ext)
    size = (int(size[0]), int(size[1]))
    ext = image_ext.lower()
    out_dir = Path(out_dir)
    class_of_role = _role_to_class(classes)
    colors = np.array([c.color for c in classes], dtype=np.uint8).reshape(-1, 3)
    counts = np.zeros(len(classes), dtype=np.int64)
    for s in range(sequences):
        scene = _make_scene(seed, s, frames)
        seq = f"Video_{s:03d}"
        for f in range(frames):
            image, roles = _render(scene, seed, s, f, size)
            ids = class_of_role[roles]
            counts += np.bincount(ids.ravel(), minlength=len(classes))
            stem = f"v{s:03d}_{f:04d}"
            label = colors[ids] if mask_format == "rgb" else ids
            write_bytes(out_dir / "Images" / seq / f"{stem}{ext}", _encode_image(image, ext))
            write_bytes(out_dir / "Labels" / seq / f"{stem}.png", _png(label, noisy=False))
    return SynthSummary(out_dir, sequences, frames, size, mask_format,
                        {c.name: int(n) for c, n in zip(classes, counts)})
