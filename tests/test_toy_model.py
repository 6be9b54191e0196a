"""The shipped toy DEEM (hub_configs/deem-toy) has learned: it answers held-out questions about fresh test
photographs better than any answerer that ignores the image can, and its CSR path rebuilds images better than
the same model with a random-weights decoder. Deterministic (greedy answers, seeded sampling)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from evaluation.answering import ImageQuestionAnswerer
from evaluation.benchmarks import load_benchmark, run_benchmark
from modeling_deem import DeemForConditionalGeneration
from toyworld.datasets import write_vqa
from toyworld.quality import reconstruction_mse

SHIPPED = Path(__file__).resolve().parents[1] / "hub_configs" / "deem-toy"
# Measured on these 24 images (seed 7, never used by training or the study's benchmarks; 247 questions) when the
# model shipped: 0.514 overall, 0.571 on colour and 0.535 on position questions, whose most frequent answers give
# 0.171 and 0.186 (see docs/TOY_WORLD.md). The floors sit a few questions below. Shape answers (0.237, exactly the
# most frequent shape's share) and size answers (0.326 against 0.488) do not beat the image-blind prior.
ACCURACY_FLOOR = 0.48
TYPE_FLOORS = {"colour": 0.50, "position": 0.47}


@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], float]:
    folder = tmp_path_factory.mktemp("toy-vqa")
    paths = write_vqa(folder, num_images=24, seed=7)
    answerer = ImageQuestionAnswerer(SHIPPED, max_new_tokens=6, batch_size=32, dtype=torch.float32,
                                     prompt="paper", task="vqav2")
    result = run_benchmark(load_benchmark("vqav2", paths["all"]), answerer, str(SHIPPED))
    return result.records, result.scores["accuracy"]


def test_shipped_toy_deem_answers_held_out_questions_above_its_floor(answered) -> None:
    records, accuracy = answered
    assert len(records) > 200
    # The best image-blind answerer says, for each question type, that type's most frequent answer on these very
    # questions (an oracle prior: no answerer that ignores the image does better on them).
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in records:
        by_type[record["question_type"]][record["answer"]] += 1
    blind = sum(counts.most_common(1)[0][1] for counts in by_type.values()) / len(records)
    assert accuracy >= ACCURACY_FLOOR and accuracy > blind, f"accuracy {accuracy:.3f} (image-blind best {blind:.3f})"
    # Colour and position are what the toy DEEM reads best: well above each type's most frequent answer.
    for question_type, floor in TYPE_FLOORS.items():
        scores = [record["accuracy"] for record in records if record["question_type"] == question_type]
        type_accuracy = sum(scores) / len(scores)
        type_blind = by_type[question_type].most_common(1)[0][1] / len(scores)
        assert type_accuracy >= floor and type_accuracy > 1.5 * type_blind, (question_type, type_accuracy, type_blind)


def test_shipped_toy_deem_rebuilds_images_better_than_a_random_decoder() -> None:
    model = DeemForConditionalGeneration.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    trained = reconstruction_mse(model, num_images=8, seed=3, steps=10)
    torch.manual_seed(0)
    model.unet.load_state_dict(type(model.unet).from_config(model.unet.config).state_dict())
    random_decoder = reconstruction_mse(model, num_images=8, seed=3, steps=10)
    assert trained < 0.5 * random_decoder, (trained, random_decoder)


def test_text_to_image_clip_score_of_the_shipped_toy_deem() -> None:
    from toyworld.quality import text_to_image_clip_score

    model = DeemForConditionalGeneration.from_pretrained(SHIPPED, dtype=torch.float32).eval()
    scores = text_to_image_clip_score(model, SHIPPED / "stage0" / "clip", num_captions=6, steps=4, seed=5,
                                      guidance_scale=1.0)  # what the main job samples with
    assert scores == text_to_image_clip_score(model, SHIPPED / "stage0" / "clip", num_captions=6, steps=4, seed=5,
                                              guidance_scale=1.0)
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    # The toy CLIP matches photographs with their own captions far better than generated images with others.
    assert scores["photographs"] > scores["generated_vs_other_captions"] + 10
    # The generations follow their captions (condition alignment; measured when it shipped, these settings: 55.9
    # with their own captions, 20.3 with others; before the alignment the two differed by about 1.5).
    assert scores["generated"] > scores["generated_vs_other_captions"] + 25, scores
