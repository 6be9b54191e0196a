"""What a toy DEEM's image side can be measured by beyond question answering: how well the CSR path rebuilds a
held-out photograph from the encoder's own tokens, how well its generations match their captions (the toy
CLIP's CLIP score), and how much its NIP path reads the caption at all (the condition gap)."""

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
def caption_match(images: list[Image.Image], captions: list[str], clip_folder: str | Path) -> dict[str, float]:
    """The toy CLIP's score (100 · cosine, floored at 0, as torchmetrics' CLIPScore) of each image with its own
    caption and with the previous image's caption (what an image unrelated to its caption gets; a repeated
    caption counts as another), averaged."""
    from .clip import load as load_clip

    return _caption_match(load_clip(clip_folder), images, captions)


def _caption_match(clip: tuple[Any, Any, Any], images: list[Image.Image], captions: list[str]) -> dict[str, float]:
    """`caption_match` with the toy CLIP (model, preprocess, tokenizer) already loaded."""
    if len(images) != len(captions) or len(images) < 2:
        raise ValueError(f"caption_match needs as many captions as images, at least 2; got {len(images)} images "
                         f"and {len(captions)} captions.")
    model, preprocess, tokenizer = clip
    text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    embedded = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)

    def score(texts: torch.Tensor) -> float:
        return float((100 * (embedded * texts).sum(-1)).clamp(min=0).mean())

    return {"own_captions": score(text), "other_captions": score(text.roll(1, 0))}


@torch.no_grad()
def text_to_image_clip_score(model: Any, clip_folder: str | Path, num_captions: int = 16, seed: int = 0,
                             steps: int = 25, split: str = "test",
                             guidance_scale: float | None = None) -> dict[str, float]:
    """CLIP score (`caption_match`) of DEEM's images generated from held-out captions with those captions, next
    to two references on the same captions: the real photographs they describe (what a perfect generator would
    reach) and the generated images scored against other captions (what images unrelated to their caption get).
    `guidance_scale` None: the package's default."""
    from .clip import load as load_clip

    model = _load(model)
    rows = photographs(split, num_rows=num_captions, seed=seed)
    captions, photos = list(rows["caption"]), [row[0] for row in rows["images"]]
    inputs = model.processor(text=captions, padding=True, padding_side="left", return_tensors="pt")
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    generated = model.generate(**inputs, generation_mode="image", num_inference_steps=steps,
                               generator=torch.Generator().manual_seed(seed), **guidance)
    clip = load_clip(clip_folder)
    scores = _caption_match(clip, generated, captions)
    return {"generated": scores["own_captions"], "photographs": _caption_match(clip, photos, captions)["own_captions"],
            "generated_vs_other_captions": scores["other_captions"]}


@torch.no_grad()
def nip_condition_gap(model: Any, num_images: int = 64, seed: int = 5, repeats: int = 4,
                      split: str = "test") -> dict[str, float]:
    """NIP loss of held-out photographs each written after its own caption ("caption <image>") and after another
    image's caption (the captions rolled by one), with the same timesteps and noise: `gap` = other − own is what
    the LLM's caption states tell the decoder. Near 0 means the NIP condition carries nothing (generations then
    cannot follow their captions, whatever the decoder draws). The model's loss weights are restored after."""
    if num_images < 2:
        raise ValueError(f"nip_condition_gap needs at least 2 images (one's caption is another's wrong one), "
                         f"got num_images={num_images}.")
    model = _load(model)
    rows = photographs(split, num_rows=num_images, seed=seed)
    captions, images = list(rows["caption"]), [row[0] for row in rows["images"]]
    weights = model.config.nip_loss_weight, model.config.csr_loss_weight
    model.config.nip_loss_weight, model.config.csr_loss_weight = 1.0, 0.0
    losses = {}
    try:
        for name, shift in (("own", 0), ("other", 1)):
            texts = [captions[(i + shift) % num_images] + " <image>" for i in range(num_images)]
            batch = model.processor(text=texts, images=images, padding=True, return_tensors="pt",
                                    return_decoder_views=True)
            total = 0.0
            for repeat in range(repeats):
                with torch.random.fork_rng():
                    torch.manual_seed(seed * 1000 + repeat)
                    total += float(model(**batch).nip_loss)
            losses[name] = total / repeats
    finally:
        model.config.nip_loss_weight, model.config.csr_loss_weight = weights
    return {**losses, "gap": losses["other"] - losses["own"]}
