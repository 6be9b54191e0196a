"""`datasets` builders for the toy world, and on-disk exports for the evaluation commands.

Row i of a split draws its scene from its own RNG seeded by (seed, split, i), never from a shared stream, so a
row is the same whether built in memory, streamed, sharded across workers or rebuilt later, and row i of every
rendition shows the same scene as row i of the photographs of that split (paired comparisons).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, IterableDataset, List, Value

from .renditions import RENDITIONS, apply_rendition
from .scene import SHAPES, Factors, Scene, render, sample_scene
from .text import (
    POPE_SPLITS,
    ShapeStats,
    caption,
    conversation,
    paper_conversation,
    pope_questions,
    questions,
    scene_summary,
)

IMAGE_MARKER = "<image>"
MEDIUM = {"photo": "photo", "outline": "line drawing", "stripes": "striped drawing", "dots": "dotted drawing"}
_SCENE_COLUMNS = {"scene": Value("string"), "shapes": List(Value("string")), "colours": List(Value("string")),
                  "count": Value("int32"), "background": Value("string"), "index": Value("int64")}
CAPTION_FEATURES = Features({"text": Value("string"), "images": List(Image()), "caption": Value("string"),
                             "rendition": Value("string"), **_SCENE_COLUMNS})
TURN = {"from": Value("string"), "value": Value("string")}
INSTRUCTION_FEATURES = Features({"messages": List({"role": Value("string"), "content": Value("string")}),
                                 "conversations": List(TURN), "images": List(Image()),
                                 "rendition": Value("string"), **_SCENE_COLUMNS})


def rng_for(purpose: str, seed: int, split: str, index: int) -> random.Random:
    """An independent RNG per (purpose, seed, split, row): string seeds hash the same in every process."""
    return random.Random(f"toyworld:{purpose}:{seed}:{split}:{index}")


def base_scene(index: int, seed: int = 0, split: str = "train", factors: Factors | None = None) -> Scene:
    """Row `index`'s photograph scene."""
    return sample_scene(rng_for("scene", seed, split, index), factors)


def _rendition_scene(index: int, kind: str, seed: int, split: str, factors: Factors | None) -> tuple[Scene, Any]:
    """Row `index` as rendition `kind`, not yet drawn: the scene it shows and the drawing style."""
    return apply_rendition(kind, base_scene(index, seed, split, factors), rng_for(kind, seed, split, index))


def shown_scene(index: int, kind: str = "photo", seed: int = 0, split: str = "train",
                factors: Factors | None = None, size: int = 64) -> tuple[Scene, Any]:
    """Row `index` as rendition `kind`: the scene the image shows (its ground truth) and the image."""
    scene, style = _rendition_scene(index, kind, seed, split, factors)
    return scene, render(scene, size, style)


def _build(rows: Callable[[int], dict[str, Any]], features: Features, num_rows: int | None, streaming: bool,
           shard_size: int = 256) -> Dataset | IterableDataset:
    """In memory, or streamed (shards of `shard_size` rows, so `num_workers` can split them; endless when
    `num_rows` is None)."""
    if not streaming:
        if num_rows is None:
            raise ValueError("An in-memory dataset needs num_rows (streaming=True allows an endless one).")
        return Dataset.from_list([rows(i) for i in range(num_rows)], features=features)
    blocks = ([[start, min(start + shard_size, num_rows)] for start in range(0, num_rows, shard_size)]
              if num_rows is not None else [[0, -1]])
    return IterableDataset.from_generator(_generate, features=features, gen_kwargs={"blocks": blocks, "rows": rows})


def _generate(blocks: list[list[int]], rows: Callable[[int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for start, stop in blocks:
        for index in itertools.count(start) if stop < 0 else range(start, stop):
            yield rows(index)


def _scene_columns(scene: Scene, index: int) -> dict[str, Any]:
    return {"scene": scene.to_json(), **scene_summary(scene), "index": index}


def _caption_row(index: int, kind: str, seed: int, split: str, factors: Factors | None, size: int) -> dict[str, Any]:
    scene, image = shown_scene(index, kind, seed, split, factors, size)
    rng = rng_for("text", seed, split, index)
    text = caption(scene, rng, MEDIUM.get(kind, "picture"))
    marked = f"{text} {IMAGE_MARKER}" if rng.random() < 0.5 else f"{IMAGE_MARKER} {text}"
    return {"text": marked, "images": [image], "caption": text, "rendition": kind, **_scene_columns(scene, index)}


def _instruction_row(index: int, kind: str, seed: int, split: str, factors: Factors | None, size: int,
                     num_turns: int, layout: str = "llava") -> dict[str, Any]:
    from trainers.data_builders import llava_conversation_row

    scene, image = shown_scene(index, kind, seed, split, factors, size)
    rng = rng_for("chat", seed, split, index)
    if layout == "paper" or (layout == "mixed" and rng.random() < 0.5):
        turns = paper_conversation(scene, rng, num_turns)
    else:
        turns = conversation(scene, rng, num_turns, medium=MEDIUM.get(kind, "picture"))
    return {**llava_conversation_row(turns, image), "conversations": turns, "rendition": kind,
            **_scene_columns(scene, index)}


def captions(split: str = "train", num_rows: int = 4096, seed: int = 0, kind: str = "photo",
             factors: Factors | None = None) -> Dataset:
    """The `caption` column of `renditions(kind, split, num_rows, seed)` alone, row for row, without drawing
    the images: text for text-only training (condition alignment)."""
    def row(index: int) -> dict[str, Any]:
        scene, _ = _rendition_scene(index, kind, seed, split, factors)
        return {"caption": caption(scene, rng_for("text", seed, split, index), MEDIUM.get(kind, "picture"))}

    return Dataset.from_list([row(i) for i in range(num_rows)], features=Features({"caption": Value("string")}))


def photographs(split: str = "train", num_rows: int | None = 256, seed: int = 0, size: int = 64,
                factors: Factors | None = None, streaming: bool = False) -> Dataset | IterableDataset:
    """Image-caption rows in the collator's format: `text` holds the caption and one `<image>` marker (before
    or after it, p = 0.5: caption-first rows are NIP targets), `images` one PIL image; plus the scene."""
    return renditions("photo", split, num_rows, seed, size, factors, streaming)


def renditions(kind: str, split: str = "test", num_rows: int | None = 256, seed: int = 0, size: int = 64,
               factors: Factors | None = None, streaming: bool = False) -> Dataset | IterableDataset:
    """Rows like `photographs`, drawn as rendition `kind` (row i shows row i's photograph scene, shifted);
    `scene` is the scene the image shows."""
    if kind not in RENDITIONS:
        raise ValueError(f"Unknown rendition {kind!r}; choose from {', '.join(RENDITIONS)}.")
    row = partial(_caption_row, kind=kind, seed=seed, split=split, factors=factors, size=size)
    return _build(row, CAPTION_FEATURES, num_rows, streaming)


def instructions(split: str = "train", num_rows: int | None = 256, seed: int = 0, size: int = 64,
                 factors: Factors | None = None, streaming: bool = False, num_turns: int = 3,
                 kind: str = "photo", layout: str = "llava") -> Dataset | IterableDataset:
    """LLaVA conversations (`conversations`) and the same as chat `messages` for the collator (only the
    assistant's short answers are targets), with the image and the scene. `layout`: "llava" (plain questions
    and answers), "paper" (Figure 8's prompts and "The answer is ...", as the paper's evaluation asks) or
    "mixed" (each row one or the other, p = 0.5)."""
    if layout not in ("llava", "paper", "mixed"):
        raise ValueError(f"Unknown conversation layout {layout!r}; choose llava, paper or mixed.")
    row = partial(_instruction_row, kind=kind, seed=seed, split=split, factors=factors, size=size,
                  num_turns=num_turns, layout=layout)
    return _build(row, INSTRUCTION_FEATURES, num_rows, streaming)


def _pope_questions(scene: Scene, index: int, split: str, stats: ShapeStats, seed: int, image_split: str,
                    factors: Factors | None) -> list[dict[str, str]]:
    """The POPE questions of one image (`index` of `image_split`), seeded per split and image: `pope` and
    `write_pope` ask the same ones."""
    return pope_questions(scene, split, stats, rng_for(f"pope-{split}", seed, image_split, index),
                          factors.shapes if factors else SHAPES)


def pope(split: str = "random", num_images: int = 100, seed: int = 0, size: int = 64, kind: str = "photo",
         stats: ShapeStats | None = None, factors: Factors | None = None, image_split: str = "test") -> Dataset:
    """POPE rows (`image`, `object`, `text`, `label`, `split`, `image_id`) over `num_images` images of
    `image_split` (rendition `kind`); popular / adversarial negatives use `stats` (default: a seeded sample of
    the training photographs' statistics)."""
    if split not in POPE_SPLITS:
        raise ValueError(f"Unknown POPE split {split!r}; choose from {POPE_SPLITS}.")
    stats = stats or ShapeStats.sample(seed=seed, factors=factors)
    rows = []
    for index in range(num_images):
        scene, image = shown_scene(index, kind, seed, image_split, factors, size)
        for question in _pope_questions(scene, index, split, stats, seed, image_split, factors):
            rows.append({"image": image, **question, "image_id": f"{kind}-{index:06d}", "scene": scene.to_json()})
    return Dataset.from_list(rows, features=Features({
        "image": Image(), "object": Value("string"), "text": Value("string"), "label": Value("string"),
        "split": Value("string"), "image_id": Value("string"), "scene": Value("string")}))


def _save_images(folder: Path, kind: str, num_images: int, seed: int, split: str, factors: Factors | None,
                 size: int) -> list[tuple[str, Scene]]:
    """Writes `images/<kind>-<index>.png`; (relative path, scene) per image."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    saved = []
    for index in range(num_images):
        scene, image = shown_scene(index, kind, seed, split, factors, size)
        relative = f"images/{kind}-{index:06d}.png"
        image.save(folder / relative)
        saved.append((relative, scene))
    return saved


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_pope(folder: str | Path, num_images: int = 100, seed: int = 0, size: int = 64, kind: str = "photo",
               factors: Factors | None = None, stats: ShapeStats | None = None,
               image_split: str = "test") -> dict[str, Path]:
    """`toy_pope_<split>.jsonl` for the three splits over the same images (POPE's public layout: `python -m
    evaluation pope --data <folder>` reads all three, the split from the file name), image paths relative to it."""
    folder = Path(folder)
    stats = stats or ShapeStats.sample(seed=seed, factors=factors)
    saved = _save_images(folder, kind, num_images, seed, image_split, factors, size)
    paths = {}
    for split in POPE_SPLITS:
        rows = [{"image": relative, **question, "image_id": Path(relative).stem}
                for index, (relative, scene) in enumerate(saved)
                for question in _pope_questions(scene, index, split, stats, seed, image_split, factors)]
        paths[split] = folder / f"toy_pope_{split}.jsonl"
        _write_jsonl(paths[split], rows)
    (folder / "shape_stats.json").write_text(json.dumps(
        {"frequency": stats.frequency, "cooccurrence": [[*k, v] for k, v in sorted(stats.cooccurrence.items())]}))
    return paths


def write_vqa(folder: str | Path, num_images: int = 100, seed: int = 0, size: int = 64, kind: str = "photo",
              factors: Factors | None = None, image_split: str = "test") -> dict[str, Path]:
    """`toy_vqa_<type>.jsonl` (count, colour, shape, position, size) and `toy_vqa_all.jsonl` in the vqav2 format
    (`question`, `answers`: the one right answer ten times, so an exact match scores 1)."""
    folder = Path(folder)
    saved = _save_images(folder, kind, num_images, seed, image_split, factors, size)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for index, (relative, scene) in enumerate(saved):
        for qa in questions(scene, rng_for("vqa", seed, image_split, index)):
            if qa.kind != "existence":
                by_type.setdefault(qa.kind, []).append({
                    "image": relative, "question": qa.question, "answers": [qa.answer] * 10, "answer": qa.answer,
                    "question_type": qa.kind, "image_id": Path(relative).stem})
    paths = {}
    every = [row for part in by_type.values() for row in part]
    for name, part in [*sorted(by_type.items()), ("all", every)]:
        paths[name] = folder / f"toy_vqa_{name}.jsonl"
        _write_jsonl(paths[name], part)
    return paths


def export_class_folders(folder: str | Path, kind: str = "photo", num_per_class: int = 20, seed: int = 0,
                         size: int = 64, split: str = "test") -> Path:
    """One-object images in ImageNet-style class folders for `build-robustvqa`: `<folder>/<shape>/<kind>-<n>.png`
    and `<folder>/classes.json` ([{"id", "name", "folder"}], ids in SHAPES order). The folders are named by
    class *name* on purpose: evaluation/robustvqa.py reads index-named folders as ImageNet classes (0 = tench),
    so it refuses these until it can take a class list instead of mislabelling them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for shape in SHAPES:
        (folder / shape).mkdir(exist_ok=True)
        factors = Factors(shapes=(shape,), counts=(1,))
        for n in range(num_per_class):
            _, image = shown_scene(n, kind, seed, f"{split}-class-{shape}", factors, size)
            image.save(folder / shape / f"{kind}-{n:05d}.png")
    classes = [{"id": i, "name": shape, "folder": shape} for i, shape in enumerate(SHAPES)]
    (folder / "classes.json").write_text(json.dumps(classes, indent=1))
    return folder
