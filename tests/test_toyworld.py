"""The toy world: seeded and controllable scenes, renditions that keep the ground truth, answers re-derived from
the scene, POPE negatives as defined, and rows that the collator and the evaluation loaders accept."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from toyworld import datasets as tw
from toyworld.renditions import RENDITIONS, apply_rendition, labels
from toyworld.scene import (
    BACKGROUNDS,
    COLOURS,
    PHOTO_SIZES,
    POSITIONS,
    SHAPES,
    Factors,
    Scene,
    colour_name,
    position_name,
    render,
)
from toyworld.text import POPE_SPLITS, ShapeStats, caption, conversation, pope_questions, questions

TINY = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-tiny"


def scenes(n: int = 40, seed: int = 0, factors: Factors | None = None) -> list[Scene]:
    return [tw.base_scene(i, seed, "test", factors) for i in range(n)]


def test_rows_are_seeded_and_streaming_matches_memory() -> None:
    first, again = tw.photographs(num_rows=4, seed=3), tw.photographs(num_rows=4, seed=3)
    assert first["scene"] == again["scene"] and first["text"] == again["text"]
    assert all(np.array_equal(np.asarray(a[0]), np.asarray(b[0])) for a, b in zip(first["images"], again["images"]))
    assert first["scene"] != tw.photographs(num_rows=4, seed=4)["scene"]
    assert first["scene"] != tw.photographs("test", num_rows=4, seed=3)["scene"]
    streamed = list(tw.photographs(num_rows=4, seed=3, streaming=True))
    assert [r["scene"] for r in streamed] == first["scene"]
    assert np.array_equal(np.asarray(streamed[2]["images"][0]), np.asarray(first["images"][2][0]))
    endless = tw.renditions("blur", num_rows=None, seed=3, streaming=True)
    assert [r["index"] for r in endless.take(3)] == [0, 1, 2]


@pytest.mark.parametrize("factor, value", [
    ("shapes", "hexagon"), ("colours", "orange"), ("sizes", "large"), ("positions", "top right"),
    ("counts", 2), ("backgrounds", "texture")])
def test_every_factor_is_controllable(factor: str, value) -> None:
    picked = scenes(30, factors=Factors(**{factor: (value,)}))
    read = {"shapes": lambda s: {o.shape for o in s.objects}, "colours": lambda s: {o.colour for o in s.objects},
            "sizes": lambda s: {o.size for o in s.objects}, "positions": lambda s: {o.position for o in s.objects},
            "counts": lambda s: {len(s.objects)}, "backgrounds": lambda s: {s.background.name}}[factor]
    assert all(read(s) == {value} for s in picked)
    with pytest.raises(ValueError):
        Factors(**{factor: ("nonsense",) if factor != "counts" else (0,)})


def test_factor_ranges_and_geometry_match_the_names() -> None:
    seen = Counter()
    for scene in scenes(80):
        image, masks = render(scene, 64, return_masks=True)
        assert image.size == (64, 64) and 1 <= len(scene.objects) <= 3
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        assert np.sum(masks, axis=0).max() <= 1  # no overlap
        for obj, mask in zip(scene.objects, masks):
            ys, xs = np.nonzero(mask)
            assert position_name((xs.min() + xs.max() + 1) / 128, (ys.min() + ys.max() + 1) / 128) == obj.position
            assert abs(max(np.ptp(xs), np.ptp(ys)) + 1 - obj.scale * 64) <= 3  # thin star tips may vanish
            assert obj.size in PHOTO_SIZES and obj.colour in COLOURS
            seen.update([obj.shape, obj.colour, obj.size, obj.position])
        assert Scene.from_json(scene.to_json()) == scene
    assert set(SHAPES) | set(COLOURS) | set(PHOTO_SIZES) | set(POSITIONS) <= set(seen)
    assert render(scenes(1)[0], 200).size == (200, 200)
    assert {"white", "cream"} <= set(BACKGROUNDS)


def test_renditions_keep_the_ground_truth() -> None:
    for kind, rendition in RENDITIONS.items():
        for index, scene in enumerate(scenes(15)):
            shown, style = apply_rendition(kind, scene, random.Random(index))
            before, after = labels(scene), labels(shown)
            assert sorted(zip(after["shape"], after["colour"])) == sorted(zip(before["shape"], before["colour"]))
            for factor in rendition.keeps:
                assert after[factor] == before[factor], (kind, factor)
            assert all(colour_name(o.fill) == o.colour for o in shown.objects)
            masks = render(shown, 64, style, return_masks=True)[1]
            assert np.sum(masks, axis=0).max() <= 1, kind
            if index == 0 and kind != "photo":
                photo = np.asarray(render(scene, 64), dtype=np.int16)
                assert np.abs(np.asarray(render(shown, 64, style), dtype=np.int16) - photo).mean() > 0.5, kind
    sizes = {o.size for s in scenes(25) for o in apply_rendition("unusual_size", s, random.Random(0))[0].objects}
    assert sizes == {"tiny", "huge"}
    assert "background" not in RENDITIONS["background"].keeps and "size" not in RENDITIONS["unusual_size"].keeps


def test_answers_are_rederived_from_the_scene() -> None:
    for index, scene in enumerate(scenes(60)):
        shapes = Counter(o.shape for o in scene.objects)
        for qa in questions(scene, random.Random(index)):
            words = qa.question.rstrip("?").split()
            if qa.kind == "count":
                expected = len(scene.objects) if words[2] == "objects" else \
                    sum(o.shape + ("es" if o.shape.endswith("s") else "s") == words[2] for o in scene.objects)
                assert qa.answer == str(expected)
            elif qa.kind == "colour":
                assert shapes[words[-1]] == 1 and qa.answer == next(o.colour for o in scene.objects
                                                                    if o.shape == words[-1])
            elif qa.kind == "shape":
                assert [o.shape for o in scene.objects if o.colour == words[-2]] == [qa.answer]
            elif qa.kind in ("position", "size"):
                (obj,) = [o for o in scene.objects if (o.colour, o.shape) == (words[-2], words[-1])]
                assert qa.answer == (obj.position if qa.kind == "position" else obj.size)
            else:
                assert qa.answer == "yes" and words[3] in shapes
        text = caption(scene, random.Random(index))
        assert all(o.colour in text for o in scene.objects)
        assert "background" not in text or scene.background.name in text


def test_pope_negatives_are_absent_and_the_splits_differ() -> None:
    stats = ShapeStats.sample(num_scenes=1500, seed=0)
    assert stats.frequency["circle"] > stats.frequency["hexagon"]  # the uneven prior shows in the statistics
    assert stats.together("circle", "star") > stats.together("circle", "hexagon")
    negatives = {split: [] for split in POPE_SPLITS}
    for index, scene in enumerate(scenes(80)):
        present = set(scene.shapes)
        for split in POPE_SPLITS:
            rows = pope_questions(scene, split, stats, random.Random(index))
            yes = [r["object"] for r in rows if r["label"] == "yes"]
            no = [r["object"] for r in rows if r["label"] == "no"]
            assert set(yes) == present and len(no) == len(yes) and not set(no) & present
            absent = [s for s in SHAPES if s not in present]
            if split == "popular":
                assert no == sorted(absent, key=lambda s: (-stats.frequency[s], SHAPES.index(s)))[:len(no)]
            if split == "adversarial":
                score = [sum(stats.together(s, p) for p in present) for s in no]
                assert min(score) >= max([sum(stats.together(s, p) for p in present)
                                          for s in absent if s not in no] or [0])
            negatives[split].append(tuple(sorted(no)))
    for a, b in (("random", "popular"), ("random", "adversarial"), ("popular", "adversarial")):
        assert sum(x != y for x, y in zip(negatives[a], negatives[b])) > 10, (a, b)
    # adversarial negatives are the present shapes' companions far more often than random ones
    companions = {"circle": "star", "star": "circle", "square": "cross", "cross": "square"}
    hits = {split: sum(any(companions.get(s) in no for s in sc.shapes) for sc, no in zip(scenes(80), negs))
            for split, negs in negatives.items()}
    assert hits["adversarial"] > hits["random"]


def test_rows_load_through_the_collator() -> None:
    from processing import DeemProcessor
    from trainers import DeemDataCollator

    processor = DeemProcessor.from_pretrained(TINY)
    rows = list(tw.photographs(num_rows=2, seed=0)) + list(tw.instructions(num_rows=2, seed=0, streaming=True))
    assert rows[2]["conversations"][0]["value"].startswith("<image>\n")
    assert conversation(scenes(1)[0], random.Random(0))[1]["from"] == "gpt"
    batch = DeemDataCollator(processor)(rows)
    assert batch["pixel_values"].shape[0] == 4 and batch["input_ids"].shape[0] == 4
    assert (batch["labels"][2:] != -100).any() and (batch["labels"][:2] != -100).any()


def test_exports_load_in_the_evaluation_formats(tmp_path: Path) -> None:
    from evaluation.benchmarks import load_benchmark

    tw.write_pope(tmp_path / "pope", num_images=6, seed=0, kind="outline")
    loaded = load_benchmark("pope", tmp_path / "pope")
    assert {r["split"] for r in loaded.rows} == set(POPE_SPLITS) and not loaded.skipped
    paths = tw.write_vqa(tmp_path / "vqa", num_images=4, seed=0)
    assert len(load_benchmark("vqav2", paths["count"]).rows) >= 4
    folder = tw.export_class_folders(tmp_path / "classes", kind="dots", num_per_class=2)
    classes = json.loads((folder / "classes.json").read_text())
    assert [c["name"] for c in classes] == list(SHAPES)
    assert all(len(list((folder / c["folder"]).glob("*.png"))) == 2 for c in classes)
    ds = tw.pope("adversarial", num_images=3)
    assert set(ds["label"]) == {"yes", "no"} and set(ds["split"]) == {"adversarial"}


@pytest.mark.parametrize("source", ["committed", "retrained"])
def test_toy_tokenizer_gives_the_chat_format_and_the_world_words_tokens_of_their_own(source: str) -> None:
    from processing.prompts_deem import PROMPT_PRESETS
    from toyworld.tokenizer import build, train_bpe

    tokenizer = build(bpe=train_bpe() if source == "retrained" else None)
    words = [*SHAPES, *COLOURS, "squares", "background", "grey", "right", "bottom", "centre"]
    assert all(len(tokenizer.tokenize(" " + word)) == 1 for word in words)
    template, prefix = PROMPT_PRESETS["vqa"]
    turn = f"You are a helpful assistant.\n## USER: {template.format(question='What colour is the star?')}" \
           f"\n## ASSISTANT: {prefix} red</s>"
    # Each word of the Figure 8 prompt and the chat markers one token (spelled out byte by byte, one turn was ~100).
    assert len(tokenizer(turn)["input_ids"]) <= 50
    assert len(tokenizer) <= 1020 and tokenizer("<s>")["input_ids"][0] == 1


def test_toy_tokenizer_is_the_committed_file_the_shipped_language_model_was_trained_with(tmp_path) -> None:
    """Every stage-0 part loads the committed BPE (a retrain numbers tokens differently in each process)."""
    import json
    from pathlib import Path

    from toyworld.tokenizer import BPE_FILE, save

    save(tmp_path)
    built = json.loads((tmp_path / "tokenizer.json").read_text())
    shipped = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-toy" / "stage0" / "lm" / "tokenizer.json"
    assert built["model"] == json.loads(BPE_FILE.read_text())["model"] == json.loads(shipped.read_text())["model"]


def test_captions_alone_are_the_renditions_captions_row_for_row() -> None:
    for kind in ("photo", "outline"):
        assert tw.captions("test", 12, seed=3, kind=kind)["caption"] == tw.renditions(kind, "test", 12, seed=3)["caption"]
    assert tw.captions("test", 12, seed=3)["caption"] != tw.captions("test", 12, seed=4)["caption"]
