"""Reading any common image input as DEEM's float RGB `(3, H, W)` in [0, 1], or refusing it with a message.

Inputs are read the way transformers' image processors read them, with guesses that could silently misread an
image replaced by errors. Exported as remote code next to `image_processing_deem.py`: flat, no package imports.

Rules:
- Types: a PIL image (any mode), a numpy array, a torch tensor (any device; gradients are ignored), or a string
  naming an image, as every transformers image processor accepts (`fetch_images`): a path to a file (also an
  `os.PathLike`), an http(s) URL, or base64 data (bare or a `data:image/...` URI). A file is opened with
  `PIL.Image.open` and turned upright by its EXIF orientation, and then read by the rules below, so a 16-bit file
  keeps its precision; URLs and base64 go through transformers' `load_image` (8-bit RGB, as for every transformers
  model). A source that cannot be read is a ValueError naming it. Bytes and other objects are refused.
- PIL modes: 1, L and RGB are read as they are; I;16 (any byte order), I and F as numbers (below); the rest
  (P, PA, LA, La, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, RGBX) through PIL's own conversion to RGB.
- Layout of arrays and tensors: HW (grey), HWC or CHW, with 1, 3 or 4 channels. The channel axis is the end of
  a 3-D shape whose size is 1, 3 or 4 (transformers' `infer_channel_dimension_format`). Where both ends could be
  channels (a 3x3x3 array, a 4-row RGB strip) transformers assumes CHW with a warning; here that is refused, as
  is a shape where neither end can be (2-channel images among them). 4-D and larger arrays are refused too
  (a batch is a list of images).
- Values, decided per image from its dtype and, where the dtype does not say, from its values:
  bool is {0, 1}; uint8 is 0-255; uint16 is 0-65535 (16-bit, read at full precision onto the same scale as
  8-bit, so `v * 257` as uint16 reads like `v` as uint8); other integers (PIL's I mode is int32) are 0-255 if
  their maximum is at most 255, else 0-65535 if at most 65535, else refused. Floats in [0, 1] are taken as they
  are; floats whose maximum exceeds 1 are taken as 0-255 (the test transformers' `is_scaled_image` uses to warn
  that `do_rescale` would rescale twice, applied here instead of warned about). An image that is dark in 0-255
  (maximum at most 1) is thus read as [0, 1]: the one ambiguity left, the same as transformers'.
  NaN or infinite values, negative values and floats above 255 are refused.
- Rescaling, transformers' `do_rescale`/`rescale_factor`: the value rules above are what `do_rescale=True` with the
  default factor 1/255 means here (`rescale_factor=None` below): 8-bit values are divided by 255 as transformers
  does, and other scales are read by their own scale instead of being rescaled twice. Another factor is applied
  as transformers applies it, `values * rescale_factor`, without reading the scale. `do_rescale=False` means, as in
  transformers, that the values are already in [0, 1]: they are taken as they are, and values outside [0, 1]
  (a 0-255 image, say) are refused rather than passed on unscaled.
- Channels: 1 is repeated to RGB; with 4, the alpha channel is dropped (not composited on white), as PIL's
  `convert("RGB")` does, which is how the original DEEM data pipeline read RGBA files.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_utils import load_image

URL_TIMEOUT_S = 30.0  # transformers' `load_image` waits forever by default

CHANNEL_COUNTS = (1, 3, 4)
_PIL_AS_IS = ("1", "L", "RGB", "I", "F")


def describe_image(image: Any) -> str:
    """Type, shape and dtype (or mode and size) of an image input, for error messages."""
    if isinstance(image, Image.Image):
        return f"a PIL image of mode {image.mode!r} and size {image.width}x{image.height} (width x height)"
    if isinstance(image, torch.Tensor):
        return f"a torch.Tensor of shape {tuple(image.shape)} and dtype {image.dtype}"
    if isinstance(image, np.ndarray):
        return f"a numpy array of shape {image.shape} and dtype {image.dtype}"
    return f"an object of type {type(image).__module__}.{type(image).__qualname__}"


def is_image_source(image: Any) -> bool:
    """Whether `image` names an image (a path, URL or base64 string) rather than holding one."""
    return isinstance(image, (str, os.PathLike))


def load_image_source(source: str | os.PathLike) -> Image.Image:
    """A path, an http(s) URL or base64 data → a PIL image (mode kept for files); ValueError naming the source."""
    name = os.fspath(source)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-20:]} ({len(name)} characters)"
    if os.path.isfile(name):
        try:
            with Image.open(name) as image:  # exif_transpose loads the pixels: the result outlives the file
                return ImageOps.exif_transpose(image)
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read the image file {shown!r}: {error}") from error
    if isinstance(source, os.PathLike):
        raise ValueError(f"No image file at {shown!r}.")
    is_url = name.startswith(("http://", "https://"))
    try:
        return load_image(name, timeout=URL_TIMEOUT_S)
    except Exception as error:  # network, HTTP, base64 and image-decoding errors all mean "cannot read it"
        what = (f"the image at the URL {shown!r}" if is_url else
                f"the image {shown!r}: it is no file, no http(s) URL and no base64 image data")
        raise ValueError(f"Cannot load {what} ({type(error).__name__}: {error})") from error


def to_rgb_tensor(image: Any, do_rescale: bool = True, rescale_factor: float | None = None) -> torch.Tensor:
    """Any supported image input → float32 `(3, H, W)`, in [0, 1] unless a `rescale_factor` says otherwise (see the
    module rules); ValueError/TypeError naming what was given."""
    if is_image_source(image):
        image = load_image_source(image)
    what = describe_image(image)
    if isinstance(image, Image.Image):
        array = _pil_to_array(image, what)
    elif isinstance(image, torch.Tensor):
        array = _tensor_to_array(image, what)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        hint = " (bytes are not read: open the file with PIL.Image.open, or give its path)" if isinstance(
            image, (bytes, bytearray)) else ""
        raise TypeError(f"Unsupported image input: got {what}; give a PIL image, a numpy array, a torch "
                        f"tensor or a path, URL or base64 string{hint}.")
    array = _check_dtype(array, what)
    if isinstance(image, Image.Image):  # PIL's layout is known: HW or HWC
        hwc = array if array.ndim == 3 else array[..., None]
    else:
        hwc = _to_hwc(array, what)
    pixels = _scale(hwc, what, do_rescale, rescale_factor)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))


def _pil_to_array(image: Image.Image, what: str) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Empty image: got {what}; an image needs at least one pixel.")
    if image.mode in _PIL_AS_IS or image.mode.startswith("I;16"):
        return np.asarray(image)
    try:
        if image.mode == "La":  # premultiplied grey + alpha: PIL converts it only to LA
            image = image.convert("LA")
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as error:
        raise ValueError(f"Cannot convert {what} to RGB: {error}") from error


def _tensor_to_array(tensor: torch.Tensor, what: str) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.is_complex():
        raise TypeError(f"Unsupported image input: got {what}; pixel values must be real numbers.")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    try:
        return tensor.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError) as error:
        raise TypeError(f"Unsupported image input: got {what} ({error}).") from error


def _check_dtype(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "buif":
        raise TypeError(f"Unsupported image input: got {what}; pixel values must be bool, integers or floats.")
    if array.size == 0:
        raise ValueError(f"Empty image: got {what}; an image needs at least one pixel.")
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _to_hwc(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        batch = " For a batch, pass a list of images." if array.ndim > 3 else ""
        raise ValueError(f"An image must be 2-D (H, W) or 3-D (H, W, C or C, H, W); got {what}.{batch}")
    first, last = array.shape[0] in CHANNEL_COUNTS, array.shape[2] in CHANNEL_COUNTS
    if first and last:
        raise ValueError(f"Ambiguous channel axis: got {what}; both the first and the last axis could hold the "
                         f"{'/'.join(map(str, CHANNEL_COUNTS))} channels. Pass it as a PIL image to say which.")
    if last:
        return array
    if first:
        return array.transpose(1, 2, 0)
    two = " (2-channel images, e.g. grey + alpha, are not read: convert to PIL mode 'LA')" if 2 in (
        array.shape[0], array.shape[2]) else ""
    raise ValueError(f"No channel axis: got {what}; the first (CHW) or last (HWC) axis must hold 1 (grey), "
                     f"3 (RGB) or 4 (RGBA) channels{two}.")


def _scale(array: np.ndarray, what: str, do_rescale: bool, rescale_factor: float | None) -> np.ndarray:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"Invalid pixel values: got {what} holding NaN or infinite values.")
    if not do_rescale:
        values = array.astype(np.float32)
        low, high = values.min(), values.max()
        if low < 0 or high > 1:
            raise ValueError(f"do_rescale=False says the pixels are already in [0, 1], but they span [{low:g}, "
                             f"{high:g}]: got {what}. Leave do_rescale on (the default) to read 8-bit and 16-bit "
                             f"images by their scale.")
        return values
    if rescale_factor is not None:
        return array.astype(np.float32) * np.float32(rescale_factor)
    return _to_unit_range(array, what)


def _to_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind == "b":
        return array.astype(np.float32)
    low, high = array.min(), array.max()
    if low < 0:
        raise ValueError(f"Negative pixel values (min {low:g}): got {what}; pixels must be in [0, 1] or "
                         f"[0, 255] (already normalised images are not read).")
    if array.dtype.kind == "f":
        if high > 255:
            raise ValueError(f"Float pixel values above 255 (max {high:g}): got {what}; floats must be in "
                             f"[0, 1] or [0, 255].")
        pixels = array.astype(np.float32)
        return pixels / np.float32(255) if high > 1 else pixels
    if array.dtype == np.uint8:
        scale = 255
    elif array.dtype == np.uint16 or 255 < high <= 65535:
        scale = 65535
    elif high <= 255:
        scale = 255
    else:
        raise ValueError(f"Integer pixel values up to {high}: got {what}; only 8-bit (0-255) and 16-bit "
                         f"(0-65535) images are read.")
    return array.astype(np.float32) / np.float32(scale)
