"""Opening benchmark images one way everywhere: fully decoded, 16-bit scaled to 8-bit (by the processor's rule),
RGB, errors that name the file.

PIL's own `convert("RGB")` clips 16-bit greyscale values at 255, so a 16-bit PNG reaches a model almost all white;
and `Image.open` decodes lazily, so a truncated file would only fail later, deep in answering, without its name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Greyscale modes wider than 8 bits, read by the processor's rule (processing/image_inputs_deem.py, "PIL modes" and
# "Value ranges") so that a file reaches a model alike through either: I;16 (any byte order) is 16-bit; "I"
# (32-bit integers, as PIL opens some files and as `Image.fromarray` makes of an int32 array) is 8-bit if its
# values are at most 255, else 16-bit if at most 65535; "F" (floats) is [0, 1] if at most 1, else 0-255. Anything
# else (negative values, wider integers, floats above 255, NaN) is refused, as the processor refuses it.
# 16-bit values become 8-bit as `value >> 8`: within one level of the processor's value / 257, exact where it
# matters (0 and 65535).
WIDE_INTEGER_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
WIDE_MODES = WIDE_INTEGER_MODES | {"F"}


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; wider-than-8-bit greyscale is scaled to 8 bits by its range (module note) instead of being
    clipped at 255. ValueError for values the processor would refuse."""
    if image.mode in WIDE_MODES:
        image = Image.fromarray(_eight_bit(np.asarray(image), image.mode))
    return image.convert("RGB")


def _eight_bit(values: np.ndarray, mode: str) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.uint8)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"mode {mode!r} image holds NaN or infinite values")
    low, high = values.min(), values.max()
    if low < 0:
        raise ValueError(f"mode {mode!r} image has negative values (min {low:g})")
    if mode == "F":
        if high > 255:
            raise ValueError(f"mode 'F' image has values above 255 (max {high:g}); floats must be in [0, 1] or "
                             "[0, 255]")
        return np.rint(values * (255 if high <= 1 else 1)).astype(np.uint8)
    if mode == "I" and high <= 255:
        return values.astype(np.uint8)
    if high > 65535:
        raise ValueError(f"mode {mode!r} image has values up to {high}; only 8-bit (0-255) and 16-bit (0-65535) "
                         "images are read")
    return (values.astype(np.int64) >> 8).astype(np.uint8)


def open_image(path: str | Path) -> Image.Image:
    """Opens and fully decodes `path` as RGB, so a missing or broken file fails here and names itself.

    Raises FileNotFoundError for a missing file and ValueError (with the path and PIL's reason) for anything that
    does not decode: truncated, not an image, too large for PIL's decompression-bomb guard.
    """
    return _decoded(path, to_rgb)


def check_image(path: str | Path) -> None:
    """What `open_image` checks (the file decodes fully, wide-mode values are readable) without making the RGB
    copy; raises as `open_image` does."""
    _decoded(path, lambda image: _eight_bit(np.asarray(image), image.mode) if image.mode in WIDE_MODES else None)


def _decoded(path: str | Path, then: Callable[[Image.Image], Any]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Missing image {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return then(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, DecompressionBombError, ...
        raise ValueError(f"Cannot read image {path}: {error}") from error


def rgb_image(image: Any, root: str | Path | None = None) -> Image.Image:
    """A PIL image as `to_rgb` makes it; anything else is a path (under `root`, when given and it is relative),
    opened with `open_image`."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return open_image(Path(image) if root is None else Path(root) / image)
