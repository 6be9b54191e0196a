"""Opening benchmark images one way everywhere: fully decoded, 16-bit scaled to 8-bit, RGB, errors that name the file.

PIL's own `convert("RGB")` clips 16-bit greyscale values at 255, so a 16-bit PNG reaches a model almost all white;
and `Image.open` decodes lazily, so a truncated file would only fail later, deep in answering, without its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Integer greyscale modes wider than 8 bits. "I" (32-bit) is what PIL gives some 16-bit files (TIFF, older PNGs):
# its values are read as 16-bit ones.
WIDE_INTEGER_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; 16-bit values are scaled to 8 bits (value >> 8) first instead of being clipped at 255."""
    if image.mode in WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Opens and fully decodes `path` as RGB, so a missing or broken file fails here and names itself.

    Raises FileNotFoundError for a missing file and ValueError (with the path and PIL's reason) for anything that
    does not decode: truncated, not an image, too large for PIL's decompression-bomb guard.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Missing image {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error, DecompressionBombError, ...
        raise ValueError(f"Cannot read image {path}: {error}") from error
