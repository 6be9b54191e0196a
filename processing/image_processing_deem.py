"""DEEM's image processor: the encoder view (CLIP-normalised) and the decoder view ([-1, 1]) of one crop.

Both views, and any region mask, come from the same crop and flip, so the CSR target is never mirrored
against the encoder input (a defect of the original code). Exported as remote code: flat, sibling imports only.

Geometry (`crop`, the stage recipes set it): "random" — training takes a random square of 0.8–1.0 of the short
side (`random_crop_scale`), inference the centred square; "center" — the centred square always (paper Table 12,
stage I); "none" — the whole image resized to a square, nothing cut off (stages II/III: text, left/right and
regions stay where they are). `flip` — a random horizontal flip in training (off in the recipes).

Options are transformers' `ImagesKwargs`, given at construction (saved in the config) or per call: `size`,
`do_rescale`/`rescale_factor` (their meaning for DEEM: `image_inputs_deem`), `do_normalize`, `image_mean`/`image_std`,
`return_tensors`, `device`; DEEM adds `decoder_size`, `crop`, `flip`, `random_crop_scale` and, per call, `return_decoder_views`,
`train`, `seed`. Standard options that DEEM's fixed square crop and resize cannot follow (`crop_size`, `resample`,
`do_pad`, ...) are refused with an error, never ignored.

Outputs: `pixel_values` always (so `model_input_names` lists it alone); `image_masks` only when masks are given and
`decoder_pixel_values` only with `return_decoder_views=True`.
"""

# No `from __future__ import annotations`: transformers reads the TypedDict's annotations as types at runtime.
import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_inputs_deem import is_image_source, load_image_source, to_rgb_tensor

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_RESCALE_FACTOR = 1 / 255

# Standard options DEEM has no counterpart for: None is fine, and so is the one value that asks for what DEEM does.
_FIXED_OPTIONS = {"do_resize": True, "do_convert_rgb": True, "do_center_crop": True, "default_to_square": True,
                  "data_format": "channels_first"}
_UNSUPPORTED_OPTIONS = {
    "crop_size": "the crop is the image's largest centred square (random with train=True); set `size`",
    "resample": "the encoder and decoder views are resized with bicubic (up) or area (down) interpolation",
    "do_pad": "views are square crops, never padded", "pad_size": "views are square crops, never padded",
    "input_data_format": "the channel axis is read from the shape (see image_inputs_deem)",
    "image_seq_length": "the number of image tokens is the processor's `num_image_tokens`",
}


class DeemImageProcessorKwargs(ImagesKwargs, total=False):
    """DEEM's own image options next to transformers' standard ones (routed here by `ProcessorMixin._merge_kwargs`)."""

    decoder_size: int
    crop: str
    flip: bool
    random_crop_scale: list[float]
    return_decoder_views: bool
    train: bool
    seed: int | None


def _to_mask_tensor(mask: Any) -> torch.Tensor:
    """Binary array / PIL / tensor (H, W) → float (H, W) in [0, 1]."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float()
    if tensor.ndim != 2:
        raise ValueError(f"A region mask must be 2-D (height, width), got shape {tuple(tensor.shape)}")
    return (tensor > 0.5).float() if tensor.max() > 1 else tensor


def _square_size(value: Any, name: str) -> int:
    """An int, `{"height": n, "width": n}` or `(n, n)` → n: DEEM's views are square."""
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        value = (value["height"], value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DEEM's views are square: give {name} as a positive int or {{'height': n, 'width': n}} "
                         f"with equal sides; got {value!r}.")
    return value


def _per_channel(value: Any, name: str) -> list[float]:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name} needs one value or one per RGB channel (3); got {value!r}.")
    return [float(v) for v in values]


def _check_standard_options(options: dict[str, Any]) -> None:
    for name, value in options.items():
        if value is None:
            continue
        if name in _FIXED_OPTIONS and getattr(value, "value", value) != _FIXED_OPTIONS[name]:
            raise ValueError(f"DeemImageProcessor cannot follow {name}={value!r}: it always does "
                             f"{name}={_FIXED_OPTIONS[name]!r}.")
        if name in _UNSUPPORTED_OPTIONS:
            raise ValueError(f"DeemImageProcessor does not take {name}: {_UNSUPPORTED_OPTIONS[name]}.")


class DeemImageProcessor(BaseImageProcessor):
    """Resize the short side, crop a square (centre, or random in training) and flip (training), then make
    `pixel_values` at `size` (CLIP normalisation) and, on request, `decoder_pixel_values` at `decoder_size`."""

    valid_kwargs = DeemImageProcessorKwargs
    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int | dict[str, int] = 256,
        decoder_size: int = 512,
        image_mean: float | list[float] | None = None,
        image_std: float | list[float] | None = None,
        random_crop_scale: list[float] | None = None,
        crop: str = "random",
        flip: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = DEFAULT_RESCALE_FACTOR,
        do_normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        _check_standard_options({k: v for k, v in kwargs.items() if k in _FIXED_OPTIONS or k in _UNSUPPORTED_OPTIONS})
        super().__init__(**kwargs)
        self.size = _square_size(size, "size")
        self.decoder_size = _square_size(decoder_size, "decoder_size")
        self.image_mean = _per_channel(OPENAI_CLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _per_channel(OPENAI_CLIP_STD if image_std is None else image_std, "image_std")
        self.random_crop_scale = list(random_crop_scale or [0.8, 1.0])
        self.crop = _crop_mode(crop)
        self.flip = bool(flip)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize

    def __call__(self, images: Any, **kwargs: Unpack[DeemImageProcessorKwargs]) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """Paths, URLs and base64 strings (also nested in lists) → PIL images, read as `image_inputs_deem` says."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        return load_image_source(image_url_or_urls) if is_image_source(image_url_or_urls) else image_url_or_urls

    @staticmethod
    def _crop_box(height: int, width: int, options: dict[str, Any], rng: random.Random) -> tuple[int, int, int, int]:
        """(top, left, box height, box width) of the region both views are made from."""
        if options["crop"] == "none":
            return 0, 0, height, width
        side = min(height, width)
        if options["train"] and options["crop"] == "random":
            side = max(1, int(side * rng.uniform(*options["random_crop_scale"])))
            return rng.randint(0, height - side), rng.randint(0, width - side), side, side
        return (height - side) // 2, (width - side) // 2, side, side

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This call's options: its own, else the processor's (None counts as not given, as in transformers)."""
        unknown = set(kwargs) - set(DeemImageProcessorKwargs.__annotations__)
        if unknown:
            raise TypeError(f"DeemImageProcessor got unexpected arguments: {', '.join(sorted(unknown))}")
        _check_standard_options(kwargs)

        def pick(name: str) -> Any:
            return getattr(self, name) if kwargs.get(name) is None else kwargs[name]

        options = {name: pick(name) for name in ("do_rescale", "rescale_factor", "do_normalize", "random_crop_scale",
                                                 "flip")}
        options["crop"] = _crop_mode(pick("crop"))
        options.update(
            size=_square_size(pick("size"), "size"), decoder_size=_square_size(pick("decoder_size"), "decoder_size"),
            image_mean=_per_channel(pick("image_mean"), "image_mean"),
            image_std=_per_channel(pick("image_std"), "image_std"),
            return_decoder_views=bool(kwargs.get("return_decoder_views")), train=bool(kwargs.get("train")),
            seed=kwargs.get("seed"), return_tensors=kwargs.get("return_tensors", "pt"), device=kwargs.get("device"),
        )
        # The default factor means "read each image's scale" (image_inputs_deem); another one is applied literally.
        default_factor = math.isclose(options["rescale_factor"], DEFAULT_RESCALE_FACTOR, rel_tol=1e-6)
        options["literal_factor"] = None if default_factor else float(options["rescale_factor"])
        if options["device"] is not None and getattr(options["return_tensors"], "value", options["return_tensors"]) != "pt":
            raise ValueError("`device` needs return_tensors='pt'.")
        return options

    def preprocess(
        self, images: Any, image_masks: list[Any] | None = None, **kwargs: Unpack[DeemImageProcessorKwargs]
    ) -> BatchFeature:
        """`images`: one image or a flat list (what each may be: see `image_inputs_deem`); `image_masks`: None or
        one mask (or None) per image; options: see the module docstring."""
        options = self._options(kwargs)
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images to process.")
        if image_masks is not None and len(image_masks) != len(images):
            raise ValueError(f"Got {len(image_masks)} image masks for {len(images)} images; give one per image (or None).")
        rng = random.Random(options["seed"])
        size, train = options["size"], options["train"]
        mean = torch.tensor(options["image_mean"])[:, None, None]
        std = torch.tensor(options["image_std"])[:, None, None]
        encoder_views, decoder_views, masks = [], [], []
        for index, image in enumerate(images):
            try:
                pixels = to_rgb_tensor(image, options["do_rescale"], options["literal_factor"])
            except (TypeError, ValueError) as error:  # say which image of the batch it is
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(f"Image {index}: {error}") from error
            _, height, width = pixels.shape
            top, left, box_height, box_width = self._crop_box(height, width, options, rng)
            flip = train and bool(options["flip"]) and rng.random() < 0.5
            crop = pixels[:, top : top + box_height, left : left + box_width]
            crop = crop.flip(-1) if flip else crop
            # Resizing may overshoot (bicubic) but never beyond [0, 1] or the crop's own range.
            low, high = min(0.0, float(crop.min())), max(1.0, float(crop.max()))
            encoder = _resize(crop, size, low, high)
            encoder_views.append((encoder - mean) / std if options["do_normalize"] else encoder)
            if options["return_decoder_views"]:
                decoder_views.append(_resize(crop, options["decoder_size"], low, high) * 2.0 - 1.0)
            mask = image_masks[index] if image_masks is not None else None
            if mask is None:
                masks.append(torch.ones(size, size))
                continue
            mask = _to_mask_tensor(mask)
            if tuple(mask.shape) != (height, width):
                raise ValueError(
                    f"The mask of image {index} has size {tuple(mask.shape)} but the image is {(height, width)}."
                )
            mask = mask[top : top + box_height, left : left + box_width]
            mask = mask.flip(-1) if flip else mask
            masks.append(_resize(mask[None], size)[0])
        data = {"pixel_values": torch.stack(encoder_views)}
        if image_masks is not None:
            data["image_masks"] = torch.stack(masks)
        if options["return_decoder_views"]:
            data["decoder_pixel_values"] = torch.stack(decoder_views)
        if options["device"] is not None:
            data = {name: tensor.to(options["device"]) for name, tensor in data.items()}
        return BatchFeature(data=data, tensor_type=options["return_tensors"])

    def postprocess_decoder_images(self, images: torch.Tensor) -> list[Image.Image]:
        """Decoder-space tensors in [-1, 1] → PIL images."""
        array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in array]


def _crop_mode(value: Any) -> str:
    if value not in ("random", "center", "none"):
        raise ValueError(f"crop must be 'random', 'center' or 'none', got {value!r}.")
    return value


def _resize(tensor: torch.Tensor, size: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    mode = "bicubic" if min(tensor.shape[-2:]) < size else "area"
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    resized = F.interpolate(tensor[None], size=(size, size), mode=mode, **kwargs)[0]
    return resized.clamp(low, high)


DeemImageProcessor.register_for_auto_class("AutoImageProcessor")
