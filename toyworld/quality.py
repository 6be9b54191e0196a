"""What a toy DEEM's image side can be measured by beyond question answering: how well the CSR path rebuilds a
held-out photograph from the encoder's own tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .datasets import photographs


def _load(model: Any) -> Any:
    if isinstance(model, (str, Path)):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model), trust_remote_code=True)
    return model.eval()


def _as_array(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255


@torch.no_grad()
def reconstructions(model: Any, images: list[Image.Image], steps: int = 25, seed: int = 0) -> list[Image.Image]:
    """The CSR path's rebuilds of `images` (seeded sampling)."""
    model = _load(model)
    pixels = model.processor(text="<image>" * len(images), images=images)["pixel_values"]
    return model.reconstruct_images(pixels, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruction_mse(model: Any, num_images: int = 16, seed: int = 0, steps: int = 25,
                       split: str = "test") -> float:
    """Mean pixel MSE (0-1 scale, at the image size) between held-out photographs and their CSR rebuilds."""
    images = [row["images"][0] for row in photographs(split, num_rows=num_images, seed=seed)]
    rebuilt = reconstructions(model, images, steps, seed)
    size = images[0].size[0]
    return float(np.mean([np.mean((_as_array(a, size) - _as_array(b, size)) ** 2) for a, b in zip(images, rebuilt)]))
