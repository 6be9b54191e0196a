"""FID and CLIP score of generated images, through torchmetrics (the paper's Table 4 reports FID on MS-COCO).

Why torchmetrics: its `FrechetInceptionDistance` runs torch-fidelity's port of the TensorFlow Inception-v3 (the
network FID numbers are quoted with) and takes a local weights file (`feature_extractor_weights_path`) or any
feature module, and its `CLIPScore` takes any transformers CLIP, so everything loads offline from local files.
torchmetrics, torch-fidelity and lightning-utilities install next to the pinned torch without pulling another one;
clean-fid downloads its weights from fixed URLs at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

INCEPTION_FEATURES = 2048  # the pool3 features every published FID uses
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release file
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def fid_metric(inception_weights: str | Path | None = None, feature: nn.Module | None = None) -> Any:
    """A FrechetInceptionDistance that keeps its reference features across `reset()` (several models, one pass
    over the references).

    `inception_weights`: torch-fidelity's Inception file on disk (offline use; without it torch-fidelity downloads
    it). `feature`: any module mapping uint8 images `(n, 3, h, w)` to `(n, d)` features instead of Inception
    (tests inject tiny ones); give it a `num_features` attribute to skip torchmetrics' probing forward.
    Resizing to 299 px is torch-fidelity's TensorFlow-style bilinear (antialias off), as in the original FID.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        return FrechetInceptionDistance(feature=feature, reset_real_features=False)
    if inception_weights is not None and not Path(inception_weights).is_file():
        raise FileNotFoundError(f"Inception weights {inception_weights} do not exist (torch-fidelity's "
                                f"{INCEPTION_WEIGHTS_FILE}).")
    try:
        return FrechetInceptionDistance(
            feature=INCEPTION_FEATURES, reset_real_features=False, antialias=False,
            feature_extractor_weights_path=None if inception_weights is None else str(inception_weights))
    except OSError as error:  # no network: urllib's URLError is an OSError
        if inception_weights is not None:
            raise
        raise RuntimeError(f"Could not download the Inception weights ({error}); pass --inception-weights "
                           f"<path to {INCEPTION_WEIGHTS_FILE}>.") from error


class ClipEmbeddings(nn.Module):
    """A transformers CLIP whose `get_image_features` / `get_text_features` return the projected embedding tensor.

    transformers 5 returns an output object there; torchmetrics 1.9's CLIPScore expects a tensor
    (Lightning-AI/torchmetrics#3407). A tensor passes through, so this stays right after torchmetrics fixes it.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embedding(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embedding(self.clip.get_text_features(*args, **kwargs))


def _embedding(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(name_or_path: str | Path) -> tuple[ClipEmbeddings, Any]:
    """A transformers CLIP folder (or hub id) and its processor, e.g. a local copy of openai/clip-vit-large-patch14
    (the CLIP-ViT-L the paper re-ranks with)."""
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(name_or_path)).eval()
    return ClipEmbeddings(model), AutoProcessor.from_pretrained(str(name_or_path))


def clip_score_metric(clip: tuple[ClipEmbeddings, Any]) -> Any:
    """torchmetrics' CLIPScore (100 · max(cos, 0), averaged) on an already loaded CLIP."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=lambda: clip)


@torch.no_grad()
def clip_similarities(clip: tuple[ClipEmbeddings, Any], images: Sequence[Image.Image], caption: str) -> list[float]:
    """Cosine similarity of each image to the caption, unclamped, for re-ranking candidates (CLIPScore's own
    clamp at 0 would make negative candidates tie)."""
    model, processor = clip
    device = next(model.parameters()).device
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
    text = processor(text=[caption], return_tensors="pt", padding=True, truncation=True)
    image_embeds = model.get_image_features(pixel_values=pixels)
    text_embeds = model.get_text_features(input_ids=text["input_ids"].to(device),
                                          attention_mask=text["attention_mask"].to(device))
    similarity = nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1)
    return [float(value) for value in similarity.cpu()]


def square_uint8(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Images → uint8 `(n, 3, size, size)`: centre-cropped to a square and resized (bicubic), so reference photos of
    any shape and the generated squares reach Inception the same way."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursively, sorted); a missing folder or fewer than 2 images is an error,
    since FID needs a covariance."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Reference image folder {folder} does not exist or is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(f"Reference image folder {folder} has {len(files)} image(s); FID needs at least 2.")
    return files


def add_images(metric: Any, images: Sequence[Image.Image], size: int, real: bool) -> None:
    """Feeds a batch to a FrechetInceptionDistance on the metric's device."""
    if images:
        metric.update(square_uint8(images, size).to(metric.device), real=real)


def add_reference_folder(metric: Any, files: Sequence[Path], size: int, batch_size: int,
                         opener: Callable[[Path], Image.Image], progress: Callable[[int], None] | None = None) -> None:
    """Streams the reference images into the metric batch by batch (30K COCO images never sit in memory)."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        add_images(metric, [opener(path) for path in chunk], size, real=True)
        if progress is not None:
            progress(len(chunk))


def fid_value(metric: Any) -> float:
    """The FID, with a clear error when either side has fewer than 2 images (no covariance)."""
    real, fake = int(metric.real_features_num_samples), int(metric.fake_features_num_samples)
    if real < 2 or fake < 2:
        raise ValueError(f"FID needs at least 2 reference and 2 generated images; got {real} and {fake}.")
    return float(metric.compute())
