"""RobustVQA construction (appendix D.1): CLIP-wrong images only, hard negative = CLIP's top-1, resumable."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from evaluation.robustvqa import ClipZeroShot, build_robustvqa, image_folder, imagenet_classes

CLASSES = imagenet_classes()


def make_folder(root, layout):
    """layout: {folder name: number of images}; images differ by colour."""
    for index, (name, count) in enumerate(layout.items()):
        (root / name).mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (24, 20), (index * 40 % 255, k * 50 % 255, 90)).save(root / name / f"{k}.png")


class KnownClassifier:
    """Predicts a fixed class per image (by the image's blue channel marker) and records what it saw."""

    def __init__(self, predictions):
        self.predictions, self.calls = predictions, 0

    def __call__(self, images):
        self.calls += 1
        logits = torch.zeros(len(images), 1000)
        for row, image in enumerate(images):
            logits[row, self.predictions[image.getpixel((0, 0))[:2]]] = 1.0
        return logits


def test_classes_ship_with_the_package():
    assert len(CLASSES) == 1000 and CLASSES[0]["wnid"] == "n01440764" and CLASSES[1]["name"] == "goldfish"


def test_hard_negative_rule_and_questions(tmp_path):
    # folder n01440764 (class 0, tench): image 0 classified right, image 1 as goldfish (1).
    # folder "2" (class 2, great white shark): its single image classified as tiger shark (3).
    make_folder(tmp_path / "images", {"n01440764": 2, "2": 1})
    predictions = {(0, 0): 0, (0, 50): 1, (40, 0): 3}
    output = tmp_path / "robustvqa_a.jsonl"
    counts = build_robustvqa("A", image_folder(tmp_path / "images"), output, KnownClassifier(predictions),
                             batch_size=2, seed=0)
    assert counts == {"images": 3, "unreadable": 0, "clip_wrong": 2, "questions": 4}
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    by_key = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    tench = sorted(by_key["n01440764/1.png"], key=lambda r: r["answer"], reverse=True)
    assert [(r["object"], r["answer"]) for r in tench] == [("tench", "yes"), ("goldfish", "no")]
    assert tench[0]["question"] == "Is tench the main object in this image? Please answer yes or no."
    assert all(r["negative_class_id"] == 1 and r["class_id"] == 0 and r["source"] == "A" for r in tench)
    shark = by_key["2/0.png"]
    assert {r["negative_class_name"] for r in shark} == {"tiger shark"}
    assert "n01440764/0.png" not in by_key  # CLIP was right: not in the benchmark

    from datasets import load_dataset

    assert len(load_dataset("json", data_files=str(output), split="train")) == 4


def test_order_is_seeded_and_scoring_resumes(tmp_path):
    make_folder(tmp_path / "images", {"n01440764": 3, "n01443537": 3})
    predictions = {(0, 0): 5, (0, 50): 6, (0, 100): 7, (40, 0): 8, (40, 50): 9, (40, 100): 10}
    items = image_folder(tmp_path / "images")

    class Interrupted(KnownClassifier):
        def __call__(self, images):
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().__call__(images)

    with pytest.raises(KeyboardInterrupt):
        build_robustvqa("R", items, tmp_path / "r.jsonl", Interrupted(predictions), batch_size=4)
    rest = KnownClassifier(predictions)
    build_robustvqa("R", items, tmp_path / "r.jsonl", rest, batch_size=4)
    assert rest.calls == 1  # only the 2 images not scored before the interruption
    again = KnownClassifier(predictions)
    build_robustvqa("R", items, tmp_path / "r2.jsonl", again, batch_size=4, seed=0)
    assert (tmp_path / "r.jsonl").read_text() == (tmp_path / "r2.jsonl").read_text()
    build_robustvqa("R", items, tmp_path / "r3.jsonl", KnownClassifier(predictions), batch_size=4, seed=1)
    assert (tmp_path / "r3.jsonl").read_text() != (tmp_path / "r2.jsonl").read_text()


def test_bad_folders_and_unreadable_images(tmp_path):
    make_folder(tmp_path / "bad", {"not-a-class": 1})
    with pytest.raises(ValueError, match="Unknown class folder 'not-a-class'"):
        image_folder(tmp_path / "bad")
    make_folder(tmp_path / "ok", {"n01440764": 1})
    (tmp_path / "ok" / "n01440764" / "broken.png").write_bytes(b"not an image")
    counts = build_robustvqa("V", image_folder(tmp_path / "ok"), tmp_path / "v.jsonl",
                             KnownClassifier({(0, 0): 3}))
    assert counts["unreadable"] == 1 and counts["clip_wrong"] == 1


def test_tiny_open_clip_end_to_end(tmp_path):
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip")
    classifier = ClipZeroShot("tiny-clip", model=model, preprocess=preprocess)
    make_folder(tmp_path / "images", {"n01440764": 2, "n01443537": 2})
    items = image_folder(tmp_path / "images")
    logits = classifier([Image.open(item.image).convert("RGB") for item in items])
    expected_wrong = sum(int(row.argmax()) != item.class_id for row, item in zip(logits, items))
    counts = build_robustvqa("A", items, tmp_path / "a.jsonl", classifier, batch_size=3)
    assert counts["clip_wrong"] == expected_wrong and counts["questions"] == 2 * expected_wrong
    assert np.isfinite(logits.numpy()).all()


def test_datasets_input_with_image_and_label_columns(tmp_path):
    from datasets import Dataset

    from evaluation.robustvqa import dataset_images

    images = [Image.new("RGB", (24, 20), (0, 0, 90)), Image.new("RGB", (24, 20), (0, 50, 90))]
    table = Dataset.from_dict({"image": images, "label": [0, 1]})
    counts = build_robustvqa("V", dataset_images(table), tmp_path / "v.jsonl",
                             KnownClassifier({(0, 0): 0, (0, 50): 7}))
    assert counts["clip_wrong"] == 1
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert all(Image.open(r["image"]).size == (24, 20) for r in rows)  # images written beside the output
    with pytest.raises(ValueError, match="not a class index \\(0-999\\)"):
        dataset_images(Dataset.from_dict({"image": images[:1], "label": [1000]}))


def test_another_label_set_names_folders_prompts_and_questions(tmp_path):
    from evaluation.__main__ import main as evaluate_main
    from evaluation.robustvqa import load_classes

    classes = [{"id": 0, "name": "circle", "folder": "circle"}, {"id": 1, "name": "star", "folder": "star"},
               {"id": 2, "name": "heart", "folder": "heart"}]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    make_folder(tmp_path / "images", {"circle": 1, "star": 1})
    items = image_folder(tmp_path / "images", load_classes(tmp_path / "classes.json"))
    assert [item.class_id for item in items] == [0, 1]
    predictions = {(0, 0): 2, (40, 0): 1}  # the circle taken for a heart; the star right
    build_robustvqa("R", items, tmp_path / "toy.jsonl", TinyClassifier(predictions, 3), classes=classes)
    rows = [json.loads(line) for line in (tmp_path / "toy.jsonl").read_text().splitlines()]
    assert sorted((r["object"], r["answer"]) for r in rows) == [("circle", "yes"), ("heart", "no")]
    with pytest.raises(ValueError, match="Unknown class folder 'square'"):
        make_folder(tmp_path / "more", {"square": 1})
        image_folder(tmp_path / "more", classes)
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1, "name": "x"}]))
    with pytest.raises(ValueError, match="class 0 must be"):
        load_classes(tmp_path / "bad.json")
    with pytest.raises(SystemExit):
        evaluate_main(["build-robustvqa", "--help"])


class TinyClassifier(KnownClassifier):
    def __init__(self, predictions, num_classes):
        super().__init__(predictions)
        self.num_classes = num_classes

    def __call__(self, images):
        logits = torch.zeros(len(images), self.num_classes)
        for row, image in enumerate(images):
            logits[row, self.predictions[image.getpixel((0, 0))[:2]]] = 1.0
        return logits
