"""What a toy DEEM's image side can be measured by beyond question answering: how well the CSR path rebuilds a
held-out photograph from the encoder's own tokens, and whether images generated from captions show what the
captions say (by the toy CLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .datasets import photographs
from .scene import SHAPES, Factors


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
def generated_shape_accuracy(model: Any, clip_folder: str | Path, num_images: int = 16, seed: int = 0,
                             steps: int = 25) -> dict[str, float]:
    """Images generated from one-object captions, read back by the toy CLIP: how often its zero-shot shape is the
    caption's, and the mean CLIP score (100 x cosine of image and caption)."""
    from . import clip as toy_clip

    model = _load(model)
    rows = photographs("test", num_rows=num_images, seed=seed + 1, factors=Factors(counts=(1,)))
    captions = [f"A photo of a {row['colours'][0]} {row['shapes'][0]}." for row in rows]
    inputs = model.processor(text=captions, padding_side="left")  # generate appends <|startofimage|>
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    images = model.generate(**inputs, generation_mode="image", num_inference_steps=steps,
                            generator=torch.Generator().manual_seed(seed))
    clip, preprocess, tokenizer = toy_clip.load(clip_folder)
    image = torch.nn.functional.normalize(clip.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
    shapes = torch.nn.functional.normalize(clip.encode_text(tokenizer([toy_clip.PROMPT.format(s) for s in SHAPES])),
                                           dim=-1)
    text = torch.nn.functional.normalize(clip.encode_text(tokenizer(captions)), dim=-1)
    predicted = (image @ shapes.T).argmax(-1).tolist()
    truth = [SHAPES.index(row["shapes"][0]) for row in rows]
    return {"shape_accuracy": sum(p == t for p, t in zip(predicted, truth)) / len(truth),
            "clip_score": float(100 * (image * text).sum(-1).clamp(min=0).mean())}
