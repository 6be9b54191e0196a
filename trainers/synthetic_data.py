"""Small generated datasets (coloured shapes with captions): the demo's and the tests' data, no download."""

from __future__ import annotations

import random

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("square", "circle", "triangle")


def draw_shape(colour: str, shape: str, rng: random.Random, size: int = 96) -> tuple[Image.Image, np.ndarray]:
    """A shape on a grey background and its binary mask."""
    image = Image.new("RGB", (size, size), (128, 128, 128))
    mask = Image.new("L", (size, size), 0)
    extent = rng.randint(size // 3, size // 2)
    left, top = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = [left, top, left + extent, top + extent]
    for canvas, fill in ((ImageDraw.Draw(image), COLOURS[colour]), (ImageDraw.Draw(mask), 255)):
        if shape == "square":
            canvas.rectangle(box, fill=fill)
        elif shape == "circle":
            canvas.ellipse(box, fill=fill)
        else:
            canvas.polygon([(left, top + extent), (left + extent, top + extent), (left + extent // 2, top)], fill=fill)
    return image, (np.asarray(mask) > 127).astype(np.uint8)


def make_shapes_dataset(num_rows: int = 64, seed: int = 0) -> Dataset:
    """Image–caption documents: half caption-then-image (a NIP target), half image-then-caption.

    Columns: `text` (with one `<image>` marker), `images` (one PIL image), `masks` (the shape's mask),
    `colour`, `shape`.
    """
    rng = random.Random(seed)
    rows: dict[str, list] = {"text": [], "images": [], "masks": [], "colour": [], "shape": []}
    for index in range(num_rows):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        image, mask = draw_shape(colour, shape, rng)
        caption = f"A photo of a {colour} {shape}."
        rows["text"].append(f"{caption} <image>" if index % 2 == 0 else f"<image> {caption}")
        rows["images"].append([image])
        rows["masks"].append([mask])
        rows["colour"].append(colour)
        rows["shape"].append(shape)
    return Dataset.from_dict(rows)
