"""DEEM's image processor: the encoder view (CLIP-normalised) and the decoder view ([-1, 1]) of one crop.

Both views, and any region mask, come from the same crop and flip, so the CSR target is never mirrored
against the encoder input (a defect of the original code). Exported as remote code: flat, sibling imports only.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .image_inputs_deem import to_rgb_tensor

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _to_mask_tensor(mask: Any) -> torch.Tensor:
    """Binary array / PIL / tensor (H, W) → float (H, W) in [0, 1]."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    tensor = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float()
    if tensor.ndim != 2:
        raise ValueError(f"A region mask must be 2-D (height, width), got shape {tuple(tensor.shape)}")
    return (tensor > 0.5).float() if tensor.max() > 1 else tensor


class DeemImageProcessor(BaseImageProcessor):
    """Resize the short side, crop a square (centre, or random in training) and flip (training), then make
    `pixel_values` at `size` (CLIP normalisation) and, on request, `decoder_pixel_values` at `decoder_size`."""

    model_input_names = ["pixel_values", "image_masks", "decoder_pixel_values"]

    def __init__(
        self,
        size: int = 256,
        decoder_size: int = 512,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        random_crop_scale: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.decoder_size = decoder_size
        self.image_mean = list(image_mean or OPENAI_CLIP_MEAN)
        self.image_std = list(image_std or OPENAI_CLIP_STD)
        self.random_crop_scale = list(random_crop_scale or [0.8, 1.0])

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def _crop_box(self, height: int, width: int, train: bool, rng: random.Random) -> tuple[int, int, int]:
        side = min(height, width)
        if train:
            side = max(1, int(side * rng.uniform(*self.random_crop_scale)))
            return rng.randint(0, height - side), rng.randint(0, width - side), side
        return (height - side) // 2, (width - side) // 2, side

    def preprocess(
        self,
        images: Any,
        image_masks: list[Any] | None = None,
        return_decoder_views: bool = False,
        train: bool = False,
        seed: int | None = None,
        return_tensors: str | None = "pt",
        **unused: Any,
    ) -> BatchFeature:
        """`images`: one image or a flat list (what each may be: see `image_inputs_deem`); `image_masks`: None or
        one mask (or None) per image."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images to process.")
        if image_masks is not None and len(image_masks) != len(images):
            raise ValueError(f"Got {len(image_masks)} image masks for {len(images)} images; give one per image (or None).")
        rng = random.Random(seed)
        mean = torch.tensor(self.image_mean)[:, None, None]
        std = torch.tensor(self.image_std)[:, None, None]
        encoder_views, decoder_views, masks = [], [], []
        for index, image in enumerate(images):
            try:
                pixels = to_rgb_tensor(image)
            except (TypeError, ValueError) as error:  # say which image of the batch it is
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(f"Image {index}: {error}") from error
            _, height, width = pixels.shape
            top, left, side = self._crop_box(height, width, train, rng)
            flip = train and rng.random() < 0.5
            crop = pixels[:, top : top + side, left : left + side]
            crop = crop.flip(-1) if flip else crop
            encoder = _resize(crop, self.size)
            encoder_views.append((encoder - mean) / std)
            if return_decoder_views:
                decoder_views.append(_resize(crop, self.decoder_size) * 2.0 - 1.0)
            mask = image_masks[index] if image_masks is not None else None
            if mask is None:
                masks.append(torch.ones(self.size, self.size))
                continue
            mask = _to_mask_tensor(mask)
            if tuple(mask.shape) != (height, width):
                raise ValueError(
                    f"The mask of image {index} has size {tuple(mask.shape)} but the image is {(height, width)}."
                )
            mask = mask[top : top + side, left : left + side]
            mask = mask.flip(-1) if flip else mask
            masks.append(_resize(mask[None], self.size)[0])
        data = {"pixel_values": torch.stack(encoder_views)}
        if image_masks is not None:
            data["image_masks"] = torch.stack(masks)
        if return_decoder_views:
            data["decoder_pixel_values"] = torch.stack(decoder_views)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def postprocess_decoder_images(self, images: torch.Tensor) -> list[Image.Image]:
        """Decoder-space tensors in [-1, 1] → PIL images."""
        array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in array]


def _resize(tensor: torch.Tensor, size: int) -> torch.Tensor:
    mode = "bicubic" if tensor.shape[-1] < size else "area"
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    resized = F.interpolate(tensor[None], size=(size, size), mode=mode, **kwargs)[0]
    return resized.clamp(0, 1)


DeemImageProcessor.register_for_auto_class("AutoImageProcessor")
