"""RobustVQA, built the paper's way (appendix D.1) from ImageNet-A / -R / -V2 images.

Zero-shot CLIP ("A photo of a {class}." over the 1000 ImageNet classes) labels every image; only the images CLIP
gets wrong are kept; CLIP's top-1 (wrong) class is the hard negative. Each kept image gives two yes/no questions:
its true class (answer yes) and the hard negative (answer no). Scoring is batched and cached per image, so an
interrupted build loses nothing on a rerun.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from processing.prompts_deem import PRESET_QUESTIONS

from .images import rgb_image, to_rgb

QUESTION = PRESET_QUESTIONS["robustvqa"]
PROMPT = "A photo of a {}."
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".jpe"}


def imagenet_classes() -> list[dict[str, Any]]:
    """The 1000 ImageNet classes in index order: `id`, `wnid`, `name` (CLIP's cleaned names)."""
    return json.loads((Path(__file__).with_name("imagenet_classes.json")).read_text())


def load_classes(path: str | Path) -> list[dict[str, Any]]:
    """Another label set (a toy world's): a JSON list of `{"id", "name"}` (+ optional `folder`/`wnid`), ids 0..n-1
    in order, so class folders, dataset labels, CLIP's prompts and the questions all use the same names."""
    classes = json.loads(Path(path).read_text())
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: expected a non-empty JSON list of classes.")
    for index, entry in enumerate(classes):
        if not isinstance(entry, dict) or entry.get("id") != index or not str(entry.get("name", "")).strip():
            raise ValueError(f"{path}: class {index} must be {{'id': {index}, 'name': ...}}, got {entry!r}.")
    return classes


@dataclass
class LabelledImage:
    key: str
    image: Any  # a path or a PIL image
    class_id: int


def image_folder(root: str | Path, classes: list[dict[str, Any]] | None = None) -> list[LabelledImage]:
    """ImageNet-style folders: one subfolder per class, named by WordNet id (n01440764), by a `classes` entry's
    `folder` (or `wnid`), or by class index."""
    classes = classes or imagenet_classes()
    by_name = {c[key]: c["id"] for c in classes for key in ("wnid", "folder") if c.get(key)}
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of class subfolders.")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in by_name:
            class_id = by_name[folder.name]
        elif folder.name.isdigit() and 0 <= int(folder.name) < len(classes):
            class_id = int(folder.name)
        else:
            raise ValueError(f"Unknown class folder {folder.name!r}: use a class's folder name (or WordNet id) or a "
                             f"class index 0-{len(classes) - 1}.")
        items += [LabelledImage(str(f.relative_to(root)), f, class_id)
                  for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    return items


def dataset_images(dataset: Any, image_column: str = "image", label_column: str = "label",
                   num_classes: int = 1000) -> list[LabelledImage]:
    """A `datasets.Dataset` with an image column and a class-index column (ImageNet's 1000 by default)."""
    items = []
    for index, row in enumerate(dataset):
        label = row[label_column]
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"Row {index}: label {label!r} is not a class index (0-{num_classes - 1}).")
        items.append(LabelledImage(f"row-{index}", row[image_column], label))
    return items


class ClipZeroShot:
    """open_clip zero-shot classifier over the classes (ImageNet's 1000 by default; ViT-L/14-336, any name + tag
    or checkpoint path)."""

    def __init__(self, model_name: str = "ViT-L-14-336", pretrained: str | None = "openai", device: str = "cpu",
                 model: Any = None, preprocess: Any = None, tokenizer: Any = None,
                 classes: list[dict[str, Any]] | None = None) -> None:
        import open_clip

        if model is None:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.device = device
        tokenizer = tokenizer or open_clip.get_tokenizer(model_name)
        names = [c["name"] for c in classes or imagenet_classes()]
        with torch.no_grad():
            text = self.model.encode_text(tokenizer([PROMPT.format(n) for n in names]).to(device))
        self.text_features = torch.nn.functional.normalize(text.float(), dim=-1)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Images → (N, number of classes) similarity logits."""
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        features = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        return features @ self.text_features.T


def build_robustvqa(
    source: str,
    images: Iterable[LabelledImage],
    output: str | Path,
    classify: Callable[[list[Image.Image]], torch.Tensor],
    batch_size: int = 32,
    seed: int = 0,
    classes: list[dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Writes `output` (JSON lines, loadable with `datasets.load_dataset("json", ...)`) and returns counts.

    Per-image CLIP results go to `<output>.scores.jsonl` as they are computed; a rerun reuses them. Unreadable
    images are skipped and counted, never replaced.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cache_path = output.with_suffix(".scores.jsonl")
    done: dict[str, dict[str, Any]] = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["key"]] = record
    items = list(images)
    todo = [item for item in items if item.key not in done]
    unreadable = 0
    with cache_path.open("a") as cache, tqdm(total=len(todo), desc=f"CLIP scoring ({source})") as bar:
        for start in range(0, len(todo), batch_size):
            batch, pictures = [], []
            for item in todo[start : start + batch_size]:
                try:
                    pictures.append(rgb_image(item.image))
                    batch.append(item)
                except (OSError, ValueError):
                    unreadable += 1
            if batch:
                logits = classify(pictures)
                for item, row in zip(batch, logits):
                    record = {"key": item.key, "class_id": item.class_id, "top1": int(row.argmax())}
                    done[item.key] = record
                    cache.write(json.dumps(record) + "\n")
                cache.flush()
            bar.update(len(todo[start : start + batch_size]))
    classes = classes or imagenet_classes()
    rows = []
    for item in sorted(items, key=lambda i: i.key):
        record = done.get(item.key)
        if record is None or record["top1"] == item.class_id:
            continue  # unreadable, or CLIP got it right
        negative = record["top1"]
        image_path = item.image
        if isinstance(item.image, Image.Image):  # images from a `datasets` table are written beside the output
            image_path = output.parent / f"{output.stem}_images" / f"{item.key}.png"
            image_path.parent.mkdir(exist_ok=True)
            to_rgb(item.image).save(image_path)
        for object_id, answer in ((item.class_id, "yes"), (negative, "no")):
            rows.append({
                "source": source, "key": item.key,
                "image": str(image_path),
                "class_id": item.class_id, "class_name": classes[item.class_id]["name"],
                "negative_class_id": negative, "negative_class_name": classes[negative]["name"],
                "object": classes[object_id]["name"], "question": QUESTION.format(object=classes[object_id]["name"]),
                "answer": answer,
            })
    random.Random(seed).shuffle(rows)
    with output.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    kept = len(rows) // 2
    return {"images": len(items), "unreadable": unreadable, "clip_wrong": kept, "questions": len(rows)}
