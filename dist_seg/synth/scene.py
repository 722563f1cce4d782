"""The world of one synthetic sequence: camera, road, façades and street objects, from a seed.

A sequence's world depends on ``(seed, sequence)`` only, never on the image size, and is
drawn from prefix-stable random streams: a longer sequence starts with the frames of a
shorter one. Coordinates are metres; the camera sits at lateral 0 and moves along ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..config.classes import DAVID_CLASSES

# Drawing roles are DAVID's class names; a custom class list is mapped onto them by name.
ROLES: tuple[str, ...] = tuple(c.name for c in DAVID_CLASSES)
ROLE_ID = {name: i for i, name in enumerate(ROLES)}

# Image materials: how a region's base colour is textured (see _TEXTURES).
PLAIN, ASPHALT, TILES, FACADE, BRICKS, SLATS, FOLIAGE, SKY = range(8)

# Objects are drawn between these depths (metres): nearer ones are behind the lens, farther
# ones sub-pixel. The world is generated this far beyond the camera's path.
FAR = 250.0
NEAR = 1.0


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Camera:
    horizon: float  # fraction of the image height
    vp_x: float  # vanishing point, fraction of the image width
    focal: float  # focal length, fraction of the image width
    height: float  # metres above the road
    speed: float  # metres per frame


@dataclass(frozen=True)
class Facade:
    """A vertical plane parallel to the road at lateral ``x``, cut into segments along z."""

    x: float
    starts: np.ndarray  # segment start z, ascending
    roles: np.ndarray
    heights: np.ndarray  # 0 = gap
    colors: np.ndarray  # [n, 3]
    materials: np.ndarray
    bumpy: np.ndarray  # foliage: irregular top edge


@dataclass(frozen=True)
class LaneLine:
    x: float
    width: float
    dashed: bool
    color: tuple[float, float, float]


@dataclass(frozen=True)
class Prop:
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
class Lighting:
    gain: float
    flicker: float  # relative amplitude of the slow gain change over time
    omega: float  # radians per frame
    phase: float
    tint: np.ndarray  # [3]
    grad_x: float
    grad_y: float
    noise: float  # sensor noise sigma, 0..255 scale


@dataclass(frozen=True)
class Scene:
    camera: Camera
    road_left: float
    road_right: float
    sidewalk_left: float
    sidewalk_right: float
    lines: tuple[LaneLine, ...]
    facades: tuple[Facade, ...]  # back rows first: painter's order
    props: tuple[Prop, ...]
    lighting: Lighting
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
    material: int = PLAIN
    jitter: float = 12.0


_FRONT_ROW = (
    _SegmentKind("building", (8, 20), (8, 30), _BUILDING_COLORS, FACADE),
    _SegmentKind("wall", (4, 10), (1.8, 3.2), ((150, 132, 110),), BRICKS),
    _SegmentKind("fence", (4, 10), (1.2, 2.0), ((120, 92, 64),), SLATS),
    _SegmentKind("vegetation", (4, 12), (2, 12), ((58, 112, 44),), FOLIAGE, jitter=10.0),
    _SegmentKind("void", (3, 8), (0, 0), ((0, 0, 0),)),  # a gap: zero height shows the row behind
)
_BACK_ROW = (
    _SegmentKind("building", (10, 30), (8, 30), _BUILDING_COLORS, FACADE),
    _SegmentKind("vegetation", (8, 25), (2, 12), ((58, 112, 44),), FOLIAGE, jitter=10.0),
)


def _make_facade(rng: np.random.Generator, x: float, z_end: float, kinds: Sequence[_SegmentKind]) -> Facade:
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
            roles.append(ROLE_ID[kind.role])
            heights.append(rng.uniform(*kind.height))
            colors.append(_jitter(rng, _pick(rng, kind.colors), kind.jitter))
            materials.append(kind.material)
            bumpy.append(kind.material == FOLIAGE)
            z += rng.uniform(*kind.length)
    return Facade(x, np.array(starts), np.array(roles, dtype=np.uint8), np.array(heights),
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
                lanes: int, lane_w: float, speed: float, z_end: float) -> list[Prop]:
    """Cars in the lanes, poles with signs, pedestrians and furniture on both sidewalks.

    Each lane and each sidewalk kind draws from its own stream, so extending ``z_end`` (a
    longer sequence) appends objects without moving the earlier ones.
    """
    road_left, road_right, side_left, side_right = scene_edges
    props: list[Prop] = []
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
            props.append(Prop("car", x + rng.uniform(-0.3, 0.3), z, car_speed,
                               rng.uniform(1.9, 2.1) if van else rng.uniform(1.7, 1.9),
                               rng.uniform(1.9, 2.3) if van else rng.uniform(1.35, 1.55),
                               (_jitter(rng, _pick(rng, _CAR_COLORS), 8),), variant=int(oncoming)))
    for side, (sign, edge, width) in enumerate(((-1.0, road_left, side_left), (1.0, road_right, side_right))):
        # Poles near the kerb, most of them with a traffic sign.
        rng = stream(10 + side)
        for z in _spaced(rng, -5.0, z_end, 18.0, 8.0):
            has_sign = rng.random() < 0.65
            props.append(Prop("pole", edge + sign * rng.uniform(0.3, 0.6), z, 0.0, rng.uniform(0.14, 0.22),
                               rng.uniform(3.2, 6.5), (_jitter(rng, _pick(rng, _SIGN_COLORS), 6),),
                               variant=int(rng.integers(1, 4)) if has_sign else 0))
        rng = stream(20 + side)
        for z in _spaced(rng, -5.0, z_end, 12.0, 1.5):
            props.append(Prop("pedestrian", edge + sign * rng.uniform(0.6, max(0.7, width - 0.5)), z,
                               rng.uniform(-0.15, 0.15), rng.uniform(0.5, 0.6), rng.uniform(1.55, 1.9),
                               (_jitter(rng, (205, 165, 135), 15), _jitter(rng, _pick(rng, _CLOTHES)),
                                _jitter(rng, _pick(rng, _CLOTHES))), phase=rng.uniform(0, math.tau)))
        rng = stream(30 + side)
        for z in _spaced(rng, -5.0, z_end, 16.0, 3.0):
            props.append(Prop("other", edge + sign * rng.uniform(max(0.6, width - 1.0), max(0.7, width - 0.4)), z,
                               0.0, rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.2),
                               (_jitter(rng, _pick(rng, _FURNITURE_COLORS)),), variant=int(rng.integers(2))))
    return props


def make_scene(seed: int, sequence: int, frames: int) -> Scene:
    """The world of one sequence. Independent of the image size."""

    def stream(*salt: int) -> np.random.Generator:
        # [.., 0, ..]: the world's streams; per-frame noise uses [.., 1, frame].
        return np.random.default_rng([seed, sequence, 0, *salt])

    rng = stream(0)
    camera = Camera(horizon=rng.uniform(0.40, 0.50), vp_x=rng.uniform(0.42, 0.58), focal=rng.uniform(0.45, 0.6),
                     height=rng.uniform(1.3, 1.7), speed=rng.uniform(0.8, 1.6))
    lanes = int(rng.integers(1, 3))
    lane_w = rng.uniform(3.1, 3.8)
    road_right, road_left = lane_w / 2, lane_w / 2 - 2 * lanes * lane_w
    side_left, side_right = rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5)
    line_w = rng.uniform(0.14, 0.22)
    centre_color = _pick(rng, ((225, 225, 215), (222, 188, 60)))
    lines = [LaneLine(road_right - 0.3, line_w, False, (225, 225, 215)),
             LaneLine(road_left + 0.3, line_w, False, (225, 225, 215))]
    for i in range(1, 2 * lanes):
        centre = i == lanes
        color = centre_color if centre else (225, 225, 215)
        lines.append(LaneLine(lane_w / 2 - i * lane_w, line_w, not centre, color))
    # Illumination varies between sequences, but not so much that a class's colour moves
    # onto another class's: the images must stay learnable across sequences.
    lighting = Lighting(gain=rng.uniform(0.88, 1.08), flicker=rng.uniform(0.0, 0.06), omega=rng.uniform(0.05, 0.3),
                         phase=rng.uniform(0, math.tau), tint=(1.0 + rng.normal(0.0, 0.025, 3)).astype(np.float32),
                         grad_x=rng.uniform(-0.15, 0.15), grad_y=rng.uniform(-0.12, 0.12), noise=rng.uniform(4.0, 9.0))
    road_color = _jitter(rng, (84, 84, 90), 5)
    sidewalk_color = _jitter(rng, (186, 186, 182), 6)
    grass_color = _jitter(rng, (86, 128, 50), 6)
    sky_color = _jitter(rng, (150, 186, 226), 6)

    # The camera travels speed * frames; oncoming cars at most as far again towards it.
    z_end = FAR + 2.0 * camera.speed * frames
    left_x, right_x = road_left - side_left, road_right + side_right
    facades = (
        _make_facade(stream(1), left_x - rng.uniform(6, 15), z_end, _BACK_ROW),
        _make_facade(stream(2), right_x + rng.uniform(6, 15), z_end, _BACK_ROW),
        _make_facade(stream(3), left_x, z_end, _FRONT_ROW),
        _make_facade(stream(4), right_x, z_end, _FRONT_ROW),
    )
    props = _make_props(lambda k: stream(5, k), (road_left, road_right, side_left, side_right), lanes, lane_w,
                        camera.speed, z_end)
    return Scene(camera, road_left, road_right, side_left, side_right, tuple(lines), facades, tuple(props),
                  lighting, road_color, sidewalk_color, grass_color, sky_color)

