"""What a toy DEEM's image side can be measured by beyond question answering: how well the CSR path rebuilds a
held-out photograph from the encoder's own tokens, and how well its generations match their captions (the toy
CLIP's CLIP score)."""

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


@torch.no_grad()
def text_to_image_clip_score(model: Any, clip_folder: str | Path, num_captions: int = 16, seed: int = 0,
                             steps: int = 25, split: str = "test") -> dict[str, float]:
    """CLIP score (100 · cosine, floored at 0, as torchmetrics' CLIPScore) of the toy CLIP between DEEM's images
    generated from held-out captions and those captions, next to two references on the same captions: the real
    photographs they describe (what a perfect generator would reach) and the generated images scored against
    other captions (what images unrelated to their caption get)."""
    from .clip import load as load_clip

    model = _load(model)
    clip, preprocess, tokenizer = load_clip(clip_folder)
    rows = photographs(split, num_rows=num_captions, seed=seed)
    captions, photos = list(rows["caption"]), [row[0] for row in rows["images"]]
    inputs = model.processor(text=captions, padding=True, padding_side="left", return_tensors="pt")
    generated = model.generate(**inputs, generation_mode="image", num_inference_steps=steps,
                               generator=torch.Generator().manual_seed(seed))
    text = torch.nn.functional.normalize(clip.encode_text(tokenizer(captions)), dim=-1)

    def score(images: list[Image.Image], texts: torch.Tensor) -> float:
        embedded = torch.nn.functional.normalize(clip.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        return float((100 * (embedded * texts).sum(-1)).clamp(min=0).mean())

    return {"generated": score(generated, text), "photographs": score(photos, text),
            "generated_vs_other_captions": score(generated, text.roll(1, 0))}
