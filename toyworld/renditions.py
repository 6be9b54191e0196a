"""Shifted renditions of a photograph's scene, for out-of-distribution tests (ImageNet-R / -A / -V2 in spirit).

A rendition maps (scene, rng) to (scene', style). The objects' identities, i.e. every object's shape and colour
name and so the counts, always survive. Each rendition states which factors' labels it *keeps* equal to the
photograph's; a factor it relabels (size, position, background) is recomputed from scene', so scene' is always
the ground truth of the image drawn from it. `changes` says what differs from a photograph.
"""

from __future__ import annotations

import colorsys
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from .scene import (
    DARK_BACKGROUNDS,
    PHOTO_SIZES,
    POSITIONS,
    Background,
    Scene,
    Style,
    colour_name,
    make_background,
    place,
    recoloured,
)

FACTORS = ("shape", "colour", "count", "size", "position", "background")
HUE_JITTER = 6.0  # degrees: under half the smallest gap between named hues (orange-yellow, about 21)


@dataclass(frozen=True)
class Rendition:
    name: str
    description: str
    changes: tuple[str, ...]  # what differs from a photograph (appearance aspects or factors)
    keeps: tuple[str, ...]  # factors whose labels equal the photograph's
    make: Callable[[Scene, random.Random], tuple[Scene, Style]]

    def __call__(self, scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
        return self.make(scene, rng)


def _seed(rng: random.Random) -> int:
    return rng.randrange(2**31)


def _same(fill: str = "solid", noise: float = 0.0, blur: float = 0.0):
    return lambda scene, rng: (scene, Style(fill, noise, blur, _seed(rng)))


def _new_background(scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    name = rng.choice([*DARK_BACKGROUNDS, "gradient", "texture"])
    return replace(scene, background=make_background(name, rng)), Style(seed=_seed(rng))


def _jitter_colour(scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    objects = []
    for obj in scene.objects:
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in obj.fill))
        h = (h + rng.uniform(-HUE_JITTER, HUE_JITTER) / 360) % 1
        s, v = min(1.0, s * rng.uniform(0.85, 1.1)), min(1.0, v * rng.uniform(0.9, 1.1))
        rgb = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))
        objects.append(recoloured(obj, rgb))
        if colour_name(objects[-1].fill) != obj.colour:  # cannot happen while HUE_JITTER < half the gap
            raise RuntimeError(f"Colour jitter moved {obj.colour} to {colour_name(objects[-1].fill)}.")
    return replace(scene, objects=tuple(objects)), Style(seed=_seed(rng))


def _unusual_size(scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    """One object: huge (0.45-0.6 of the side), clamped into the image (its centre stays in its cell since
    half a side is at most 0.3 < 1/3). Two or three: tiny (0.06-0.09) at their cell centres."""
    objects = []
    for obj in scene.objects:
        if len(scene.objects) == 1:
            scale = rng.uniform(0.45, 0.6)
            x, y = (min(max(v, scale / 2), 1 - scale / 2) for v in (obj.x, obj.y))
        else:
            scale = rng.uniform(0.06, 0.09)
            x, y = place(scale, obj.position, rng, spread=0.3)
        objects.append(replace(obj, scale=round(scale, 4), x=round(x, 4), y=round(y, 4)))
    return replace(scene, objects=tuple(objects)), Style(seed=_seed(rng))


def _unusual_position(scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    """Objects pushed to the outer edge of their cell (the image border for border cells; a random corner of
    the centre cell), never crossing it: position names and non-overlap hold."""
    objects = []
    for obj in scene.objects:
        row, column = divmod(POSITIONS.index(obj.position), 3)
        pull = [(-1 if c == 0 else 1 if c == 2 else rng.choice((-1, 1))) for c in (column, row)]
        centre = [(column + 0.5) / 3, (row + 0.5) / 3]
        x, y = (c + p * (1 / 6 - obj.scale / 2 - 0.005) for c, p in zip(centre, pull))
        objects.append(replace(obj, x=round(x, 4), y=round(y, 4)))
    return replace(scene, objects=tuple(objects)), Style(seed=_seed(rng))


def _v2(scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    """A re-collected test set: scales from the whole photo span (the size name is recomputed and may change),
    centres anywhere inside the cell, the background shade moved a little (its name kept)."""
    low, high = min(r[0] for r in PHOTO_SIZES.values()), max(r[1] for r in PHOTO_SIZES.values())
    objects = []
    for obj in scene.objects:
        scale = rng.uniform(low, high)
        x, y = place(scale, obj.position, rng, spread=1.0)
        objects.append(replace(obj, scale=round(scale, 4), x=round(x, 4), y=round(y, 4)))
    light = rng.randint(-8, 8)  # mostly lightness, little hue: the background's name still fits
    shade = tuple(tuple(min(255, max(0, c + light + rng.randint(-3, 3))) for c in rgb)
                  for rgb in scene.background.colours)
    background = Background(scene.background.name, scene.background.kind, shade, scene.background.seed)
    return Scene(tuple(objects), background), Style(seed=_seed(rng))


_ALL = tuple(FACTORS)
_NOT_BACKGROUND = ("shape", "colour", "count", "size", "position")
RENDITIONS: dict[str, Rendition] = {r.name: r for r in (
    Rendition("photo", "the photograph itself (reference)", (), _ALL, _same()),
    Rendition("outline", "outlines only in the object's colour, no fill (sketch-like)", ("fill",), _ALL,
              _same("outline")),
    Rendition("stripes", "striped fill: the colour on a light tint of it, with a thin rim", ("fill", "texture"),
              _ALL, _same("stripes")),
    Rendition("dots", "polka-dot fill: the colour on a light tint of it, with a thin rim", ("fill", "texture"),
              _ALL, _same("dots")),
    Rendition("noise", "gaussian pixel noise, std 40 of 255", ("noise",), _ALL, _same(noise=40.0)),
    Rendition("blur", "gaussian blur, radius 2% of the image side", ("blur",), _ALL, _same(blur=0.02)),
    Rendition("background", "a new background: dark plain, gradient or texture (relabelled)", ("background",),
              _NOT_BACKGROUND, _new_background),
    Rendition("colour_jitter", f"object hue +-{HUE_JITTER:g} deg, saturation x0.85-1.1, value x0.9-1.1: shades move, "
              "colour names hold", ("shade",), _ALL, _jitter_colour),
    Rendition("unusual_size", "one object huge, or two or three tiny (sizes relabelled tiny / huge)", ("size",),
              ("shape", "colour", "count", "position", "background"), _unusual_size),
    Rendition("unusual_position", "objects pushed against the image border / cell edges, same cells",
              ("placement",), _ALL, _unusual_position),
    Rendition("v2", "same world re-sampled: continuous sizes (relabelled), free placement, background shade",
              ("size", "placement", "shade"), ("shape", "colour", "count", "position", "background"), _v2),
)}
# A suggested grouping for a toy RobustVQA's three sources (R: renditions, A: hard natural shifts, V: re-sample).
ROBUSTVQA_SOURCES = {"R": ("outline", "stripes", "dots"),
                     "A": ("noise", "blur", "background", "colour_jitter", "unusual_size", "unusual_position"),
                     "V": ("v2",)}


def apply_rendition(kind: str, scene: Scene, rng: random.Random) -> tuple[Scene, Style]:
    """The rendition `kind` of a photograph's scene: the scene it shows (its ground truth) and how to draw it."""
    if kind not in RENDITIONS:
        raise ValueError(f"Unknown rendition {kind!r}; choose from {', '.join(RENDITIONS)}.")
    return RENDITIONS[kind](scene, rng)


def labels(scene: Scene) -> dict[str, list]:
    """Each factor's labels, object by object (background: one label): what `keeps` is checked against."""
    return {"shape": [o.shape for o in scene.objects], "colour": [o.colour for o in scene.objects],
            "count": [len(scene.objects)], "size": [o.size for o in scene.objects],
            "position": [o.position for o in scene.objects], "background": [scene.background.name]}
