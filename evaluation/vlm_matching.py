"""Image–text matching benchmarks for scorers (the diffusion matcher, a CLIP baseline): MMVP-VLM and Winoground.

A scorer maps (image, texts) to one score per text, higher = better match. Both benchmarks compare a 2×2 matrix
S[i][j] = score(image i, text j) per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import open_image, rgb_image
from .rows import read_rows

Scorer = Callable[[Image.Image, Sequence[str]], Sequence[float]]
MMVP_VLM_IMAGE_FOLDERS = ("MLLM_VLM Images", "MLLM_VLM_Images", "MMVP_VLM Images", "MMVP_VLM_Images")


def pair_matrix(scorer: Scorer, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
    return np.array([list(map(float, scorer(image, texts))) for image in images])


def mmvp_vlm_pair_correct(matrix: np.ndarray) -> bool:
    """Each statement must pick its own image: S[0][0] > S[1][0] and S[1][1] > S[0][1]."""
    return bool(matrix[0, 0] > matrix[1, 0] and matrix[1, 1] > matrix[0, 1])


def winoground_scores(matrix: np.ndarray) -> dict[str, bool]:
    """Winoground's text score (each image prefers its caption), image score (each caption prefers its image) and
    group score (both)."""
    text = bool(matrix[0, 0] > matrix[0, 1] and matrix[1, 1] > matrix[1, 0])
    image = bool(matrix[0, 0] > matrix[1, 0] and matrix[1, 1] > matrix[0, 1])
    return {"text": text, "image": image, "group": text and image}


def load_mmvp_vlm(folder: str | Path) -> list[dict[str, Any]]:
    """MMVP-VLM's public layout: `Questions.csv` (question id, type = visual pattern, statement) and images
    `<images>/<type>/<id>.jpg`. Consecutive ids of one type form a pair.

    The images folder is `MLLM_VLM Images` in the release (huggingface.co/datasets/MMVP/MMVP_VLM, and the path
    tsb0601/MMVP's scripts/evaluate_vlm.py opens); copies also name it with an underscore for the space or with
    MMVP for MLLM, so all four spellings are read, then `images` or the folder itself."""
    folder = Path(folder)
    rows = read_rows(folder / "Questions.csv")
    if not rows:
        raise ValueError(f"{folder / 'Questions.csv'} has no rows.")
    key = {name.lower().strip(): name for name in rows[0]}
    id_key = key.get("question id") or key.get("id")
    type_key = key.get("type") or key.get("pattern")
    text_key = key.get("statement") or key.get("question")
    if not (id_key and type_key and text_key):
        raise ValueError(f"Questions.csv needs question id, type and statement columns; got {list(rows[0])}.")
    roots = [folder / name for name in MMVP_VLM_IMAGE_FOLDERS] + [folder / "images", folder]
    items = []
    for first, second in zip(rows[0::2], rows[1::2]):
        if first[type_key] != second[type_key]:
            raise ValueError(f"Questions {first[id_key]} and {second[id_key]} form a pair but differ in type.")
        images = [_find_image(roots, row[type_key], row[id_key]) for row in (first, second)]
        items.append({"pattern": first[type_key], "ids": [first[id_key], second[id_key]], "images": images,
                      "texts": [first[text_key], second[text_key]]})
    return items


def _find_image(roots: list[Path], pattern: str, question_id: str) -> Path:
    for root in roots:
        for suffix in (".jpg", ".jpeg", ".png"):
            path = root / pattern / f"{question_id}{suffix}"
            if path.exists():
                return path
    raise FileNotFoundError(f"No image for question {question_id} ({pattern}) under {roots[0].parent}.")


def evaluate_mmvp_vlm(items: list[dict[str, Any]], scorer: Scorer) -> dict[str, Any]:
    per_pattern: dict[str, list[bool]] = {}
    records = []
    for item in items:
        matrix = pair_matrix(scorer, [open_image(p) for p in item["images"]], item["texts"])
        correct = mmvp_vlm_pair_correct(matrix)
        per_pattern.setdefault(item["pattern"], []).append(correct)
        records.append({**{k: v for k, v in item.items() if k != "images"}, "images": [str(p) for p in item["images"]],
                        "matrix": matrix.tolist(), "correct": correct})
    scores = {pattern: sum(v) / len(v) for pattern, v in sorted(per_pattern.items())}
    scores["mean"] = sum(scores.values()) / len(scores) if scores else float("nan")
    return {"scores": scores, "records": records}


def evaluate_winoground(rows: list[dict[str, Any]], scorer: Scorer, image_root: Path | None = None) -> dict[str, Any]:
    totals = {"text": 0, "image": 0, "group": 0}
    records = []
    for row in rows:
        images = [rgb_image(row[f"image_{i}"], image_root) for i in (0, 1)]
        matrix = pair_matrix(scorer, images, [row["caption_0"], row["caption_1"]])
        result = winoground_scores(matrix)
        for name in totals:
            totals[name] += result[name]
        records.append({**{k: v for k, v in row.items() if not isinstance(v, Image.Image)}, "matrix": matrix.tolist(),
                        **result})
    return {"scores": {k: v / len(rows) for k, v in totals.items()} if rows else {}, "records": records}


class ClipScorer:
    """The CLIP baseline: cosine similarity of open_clip image and text embeddings."""

    def __init__(self, model_name: str = "ViT-L-14-336", pretrained: str | None = "openai", model: Any = None,
                 preprocess: Any = None, tokenizer: Any = None) -> None:
        import open_clip

        if model is None:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model, self.preprocess = model.eval(), preprocess
        self.tokenizer = tokenizer or open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def __call__(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        image_features = self.model.encode_image(self.preprocess(image)[None]).float()
        text_features = self.model.encode_text(self.tokenizer(list(texts))).float()
        image_features = torch.nn.functional.normalize(image_features, dim=-1)
        text_features = torch.nn.functional.normalize(text_features, dim=-1)
        return (image_features @ text_features.T)[0].tolist()


def diffusion_scorer(scorer: Any, score: str = "attention") -> Scorer:
    """Adapts `DiffusionImageTextScorer` to higher-is-better: the attention score, or the negated error."""
    if score not in ("attention", "error"):
        raise ValueError(f"score must be 'attention' or 'error', got {score!r}")

    def scores(image: Image.Image, texts: Sequence[str]) -> list[float]:
        result = scorer.score(image, texts)
        return (result.attention if score == "attention" else -result.error).tolist()

    return scores
