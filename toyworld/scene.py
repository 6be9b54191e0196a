"""Scenes of coloured shapes: sampling with controllable factors, and anti-aliased rendering at any size.

Geometry is in image fractions (x right, y down, both in [0, 1]), so one scene renders identically at 64 px or
512 px. Every factor a question can ask about has a precise, computable name:

- size: the object's bounding-box side as a fraction of the image side (`scale`), named by `SIZE_BINS`
  (photographs draw from the small / medium / large ranges only, well inside their bins);
- position: the 3x3 grid cell of the object's centre: column left if x < 1/3, right if x > 2/3, else centre;
  row top if y < 1/3, bottom if y > 2/3, else middle; named "top left", "top", ..., "centre", ..., "bottom right"
  (`POSITIONS`). Photographs put each object wholly inside its own cell, so objects never overlap and no centre
  lies near a cell border.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLOURS: dict[str, tuple[int, int, int]] = {  # saturated hues at least 20 degrees apart (see colour_name)
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (235, 210, 30), "green": (40, 170, 60),
    "cyan": (30, 190, 200), "blue": (40, 70, 220), "purple": (140, 50, 200), "pink": (235, 80, 170),
}
PHOTO_SIZES = {"small": (0.12, 0.16), "medium": (0.19, 0.24), "large": (0.27, 0.31)}
SIZE_BINS = (("tiny", 0.10), ("small", 0.175), ("medium", 0.255), ("large", 0.40), ("huge", math.inf))
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
PHOTO_BACKGROUNDS = {"white": (250, 250, 250), "light grey": (220, 220, 220), "cream": (245, 238, 215),
                     "pale blue": (222, 234, 246)}
DARK_BACKGROUNDS = {"black": (15, 15, 15), "dark grey": (60, 60, 60), "navy": (20, 25, 70),
                    "dark brown": (60, 40, 25)}
PATTERN_BACKGROUNDS = ("gradient", "texture")
BACKGROUNDS = (*PHOTO_BACKGROUNDS, *DARK_BACKGROUNDS, *PATTERN_BACKGROUNDS)
# The photographs' shape statistics are deliberately uneven, so that POPE's popular and adversarial negatives
# differ from random ones: a prior favouring the first shapes, and companion pairs that tend to appear together.
SHAPE_PRIOR = {"circle": 0.22, "square": 0.18, "triangle": 0.15, "star": 0.12, "cross": 0.10, "heart": 0.09,
               "diamond": 0.08, "hexagon": 0.06}
COMPANIONS = {"circle": "star", "star": "circle", "square": "cross", "cross": "square", "triangle": "diamond",
              "diamond": "triangle", "heart": "hexagon", "hexagon": "heart"}


def size_name(scale: float) -> str:
    """The size bin of a bounding-box side given as a fraction of the image side."""
    return next(name for name, upper in SIZE_BINS if scale < upper)


def position_name(x: float, y: float) -> str:
    """The 3x3 grid cell of a centre (see the module docstring for the exact thresholds)."""
    column = 0 if x < 1 / 3 else 2 if x > 2 / 3 else 1
    row = 0 if y < 1 / 3 else 2 if y > 2 / 3 else 1
    return POSITIONS[3 * row + column]


def hue(rgb: tuple[int, int, int]) -> float:
    """HSV hue in degrees."""
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The named colour with the nearest hue: how a (jittered) object colour is read back to its label."""
    return min(COLOURS, key=lambda name: abs((hue(rgb) - hue(COLOURS[name]) + 180) % 360 - 180))


@dataclass(frozen=True)
class SceneObject:
    """One shape; `rgb` overrides the colour's canonical shade (colour jitter), the name stays the label."""

    shape: str
    colour: str
    scale: float
    x: float
    y: float
    rgb: tuple[int, int, int] | None = None

    @property
    def size(self) -> str:
        return size_name(self.scale)

    @property
    def position(self) -> str:
        return position_name(self.x, self.y)

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(self.rgb) if self.rgb is not None else COLOURS[self.colour]


@dataclass(frozen=True)
class Background:
    """`name` is the label captions use; `kind` is plain, gradient or texture; `seed` fixes a texture."""

    name: str
    kind: str = "plain"
    colours: tuple[tuple[int, int, int], ...] = ((250, 250, 250),)
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the derived size and position names written out for readers of the metadata."""
        objects = [{**asdict(o), "size": o.size, "position": o.position} for o in self.objects]
        return {"objects": objects, "background": asdict(self.background)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        keys = {"shape", "colour", "scale", "x", "y", "rgb"}
        objects = tuple(SceneObject(**{k: (tuple(v) if k == "rgb" and v is not None else v)
                                       for k, v in o.items() if k in keys}) for o in data["objects"])
        background = dict(data["background"])
        background["colours"] = tuple(tuple(c) for c in background["colours"])
        return cls(objects, Background(**background))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        return cls.from_dict(json.loads(text))

    @property
    def shapes(self) -> list[str]:
        return [o.shape for o in self.objects]


@dataclass(frozen=True)
class Factors:
    """The ranges a scene is drawn from; restrict any of them to control that factor."""

    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = tuple(PHOTO_SIZES)
    positions: tuple[str, ...] = POSITIONS
    counts: tuple[int, ...] = (1, 2, 3)
    backgrounds: tuple[str, ...] = tuple(PHOTO_BACKGROUNDS)
    shape_weights: dict[str, float] = field(default_factory=lambda: dict(SHAPE_PRIOR))
    companion_prob: float = 0.5

    def __post_init__(self) -> None:
        for name, values, known in (("shapes", self.shapes, SHAPES), ("colours", self.colours, COLOURS),
                                    ("sizes", self.sizes, PHOTO_SIZES), ("positions", self.positions, POSITIONS),
                                    ("backgrounds", self.backgrounds, BACKGROUNDS)):
            if not values or set(values) - set(known):
                raise ValueError(f"{name} must be a non-empty subset of {known}, got {values}.")
        if not self.counts or min(self.counts) < 1 or min(self.counts) > len(self.positions):
            raise ValueError(f"counts {self.counts} must be >= 1 and some <= {len(self.positions)} positions.")

    @property
    def feasible_counts(self) -> tuple[int, ...]:
        """The counts that fit one object per allowed cell (fewer cells than objects: that count is dropped)."""
        return tuple(c for c in self.counts if c <= len(self.positions))


def make_background(name: str, rng: random.Random) -> Background:
    """A named background; gradients and textures draw their two colours (dark or muted) and seed from `rng`."""
    if name in PHOTO_BACKGROUNDS:
        return Background(name, "plain", (PHOTO_BACKGROUNDS[name],))
    if name in DARK_BACKGROUNDS:
        return Background(name, "plain", (DARK_BACKGROUNDS[name],))
    if name not in PATTERN_BACKGROUNDS:
        raise ValueError(f"Unknown background {name!r}; choose from {BACKGROUNDS}.")
    colours = tuple(tuple(rng.randint(20, 140) for _ in range(3)) for _ in range(2))
    return Background(name, name, colours, rng.randrange(2**31))


def place(scale: float, cell: str, rng: random.Random, spread: float = 0.9) -> tuple[float, float]:
    """A centre keeping a box of side `scale` inside `cell` (`spread` of the free room is used)."""
    row, column = divmod(POSITIONS.index(cell), 3)
    room = max(0.0, (1 / 3 - scale) / 2) * spread
    return ((column + 0.5) / 3 + rng.uniform(-room, room), (row + 0.5) / 3 + rng.uniform(-room, room))


def sample_scene(rng: random.Random, factors: Factors | None = None) -> Scene:
    """A photograph's scene: 1-3 objects in distinct grid cells, shapes from the prior and companion pairs."""
    factors = factors or Factors()
    shapes = list(factors.shapes)
    weights = [factors.shape_weights.get(s, 1.0) for s in shapes]
    count = rng.choice(factors.feasible_counts)
    cells = rng.sample(list(factors.positions), count)
    objects: list[SceneObject] = []
    for cell in cells:
        companion = COMPANIONS.get(rng.choice(objects).shape) if objects else None
        if companion in shapes and rng.random() < factors.companion_prob:
            shape = companion
        else:
            shape = rng.choices(shapes, weights)[0]
        colour = rng.choice(factors.colours)
        scale = rng.uniform(*PHOTO_SIZES[rng.choice(factors.sizes)])
        objects.append(SceneObject(shape, colour, round(scale, 4), *(round(v, 4) for v in place(scale, cell, rng))))
    return Scene(tuple(objects), make_background(rng.choice(factors.backgrounds), rng))


@dataclass(frozen=True)
class Style:
    """How a scene is drawn, beyond its content: fill, noise (std, 0-255 units), blur (radius / image side)."""

    fill: str = "solid"  # solid, outline, stripes, dots
    noise: float = 0.0
    blur: float = 0.0
    seed: int = 0


@functools.cache
def _polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """The outline in a unit box centred on 0 (y down), fitted to the box (computed once per shape)."""
    if shape == "circle":
        points = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 72, endpoint=False)]
    elif shape == "square":
        points = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        points = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        points = [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    elif shape == "hexagon":
        points = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in range(0, 360, 60)]
    elif shape == "star":
        points = [((1 if i % 2 == 0 else 0.42) * math.cos(math.radians(-90 + 36 * i)),
                   (1 if i % 2 == 0 else 0.42) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    elif shape == "cross":
        a = 0.34
        points = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                  (-1, -a), (-a, -a)]
    elif shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        points = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                            - math.cos(4 * t))) for t in ts]
    else:
        raise ValueError(f"Unknown shape {shape!r}; choose from {SHAPES}.")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy, half = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2, max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(((x - cx) / half / 2, (y - cy) / half / 2) for x, y in points)


def _background(background: Background, side: int) -> Image.Image:
    first = background.colours[0]
    if background.kind == "plain":
        return Image.new("RGB", (side, side), first)
    rng = np.random.default_rng(background.seed)
    second = np.array(background.colours[-1], dtype=np.float32)
    if background.kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        grid = np.linspace(-1, 1, side, dtype=np.float32)
        weight = (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]) / math.sqrt(2) / 2 + 0.5
    else:  # texture: smooth random blotches mixing the two colours
        coarse = Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8))
        weight = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float32) / 255
    mixed = np.array(first, dtype=np.float32) * (1 - weight[..., None]) + second * weight[..., None]
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def _fill_layer(colour: tuple[int, int, int], fill: str, side: int, rng: np.random.Generator) -> Image.Image:
    """Solid colour, or stripes / dots of the colour on a light tint of it."""
    if fill in ("solid", "outline"):
        return Image.new("RGB", (side, side), colour)
    tint = tuple(int(c + (255 - c) * 0.75) for c in colour)
    layer = Image.new("RGB", (side, side), tint)
    draw = ImageDraw.Draw(layer)
    period = side / rng.uniform(14, 20)
    if fill == "stripes":
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-2 * int(side / period), 2 * int(side / period) + 1):
            ox, oy = side / 2 + k * period * -dy, side / 2 + k * period * dx
            draw.line([(ox - 2 * side * dx, oy - 2 * side * dy), (ox + 2 * side * dx, oy + 2 * side * dy)],
                      fill=colour, width=max(1, int(period / 2)))
    elif fill == "dots":
        radius = period / 3
        for i in range(int(side / period) + 1):
            for j in range(int(side / period) + 1):
                cx, cy = (i + 0.5 * (j % 2)) * period, (j + 0.5) * period
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        raise ValueError(f"Unknown fill {fill!r}: solid, outline, stripes or dots.")
    return layer


def object_mask(obj: SceneObject, side: int, outline_width: float = 0.0) -> Image.Image:
    """The object's region (or, with a width in pixels, its outline stroke) as an L image of the given side."""
    mask = Image.new("L", (side, side), 0)
    points = [((obj.x + px * obj.scale) * side, (obj.y + py * obj.scale) * side) for px, py in _polygon(obj.shape)]
    draw = ImageDraw.Draw(mask)
    if outline_width:
        draw.line([*points, points[0], points[1]], fill=255, width=max(1, round(outline_width)), joint="curve")
    else:
        draw.polygon(points, fill=255)
    return mask


def render(scene: Scene, size: int = 64, style: Style | None = None, supersample: int = 4,
           return_masks: bool = False) -> Image.Image | tuple[Image.Image, list[np.ndarray]]:
    """Draws at `supersample` x `size` and downsamples (anti-aliasing); blur and noise act at the final size.

    With `return_masks`, also each object's binary mask (size x size, uint8) of its filled region."""
    style = style or Style()
    side = size * supersample
    rng = np.random.default_rng(style.seed)
    canvas = _background(scene.background, side)
    for obj in scene.objects:
        stroke = max(2.0, 0.06 * obj.scale * side) if style.fill == "outline" else 0.0
        canvas.paste(_fill_layer(obj.fill, style.fill, side, rng), mask=object_mask(obj, side, stroke))
        if style.fill in ("stripes", "dots"):  # a thin rim keeps the silhouette readable
            canvas.paste(obj.fill, mask=object_mask(obj, side, max(1.0, 0.025 * obj.scale * side)))
    image = canvas.resize((size, size), Image.LANCZOS)
    if style.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(style.blur * size))
    if style.noise > 0:
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, style.noise, (size, size, 3))
        image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    if not return_masks:
        return image
    masks = [(np.asarray(object_mask(o, side).resize((size, size), Image.BILINEAR)) > 127).astype(np.uint8)
             for o in scene.objects]
    return image, masks


def recoloured(obj: SceneObject, rgb: tuple[int, int, int]) -> SceneObject:
    """The same object drawn in another shade (the caller keeps the colour name valid)."""
    return replace(obj, rgb=tuple(int(c) for c in rgb))
