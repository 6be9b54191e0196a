"""Benchmark answering throughput at batch 8 vs batch 1 on POPE-like data (several images, ~6 questions each),
side by side in one process.

`ImageQuestionAnswerer` fills batches with questions of several images and encodes each image once (at batch 1
too), so the ratio is what batching itself buys. The A/B runs of each pair go in alternating order after a
warm-up, at a fixed thread count. Each run answers the whole set, and its time is this process's CPU time. Both
batch sizes must give the same answers. Two sizes: `tiny` is hub_configs/deem-tiny as it is (64 px images);
`small` puts in a convnext_atto encoder at 256 px and a 4-layer, 256-wide LLM, so that model compute, not Python
overhead, takes most of the time. Prints a table and writes JSON.

    .venv/bin/python benchmarks/eval_batching.py [--sizes tiny small] [--pairs 9] [--threads 1]
        [--output outputs/eval_batching.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread everywhere, so CPU time is comparable

from evaluation.answering import ImageQuestionAnswerer, Question  # noqa: E402
from evaluation.benchmarks import POPE_QUESTION  # noqa: E402
from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from modeling_deem.tiny import tiny_config_dict  # noqa: E402
from processing import DeemProcessor  # noqa: E402

TINY = ROOT / "hub_configs" / "deem-tiny"
# POPE asks about COCO objects, 3 present and 3 absent per image; names of different lengths pad the batches.
OBJECTS = ["cat", "traffic light", "dog", "dining table", "person", "umbrella", "car", "potted plant"]


def build_model(size: str, folder: Path) -> int:
    """Saves a randomly initialised DEEM (no image decoder: answering does not use it); returns its parameters."""
    torch.manual_seed(0)
    config = tiny_config_dict()
    image_size = 64
    if size == "small":
        config["vision_config"].update(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320])  # convnext_atto
        config["text_config"].update(hidden_size=256, intermediate_size=683, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=8)
        config["condition_resampler_config"]["encoder_hidden_size"] = 256
        image_size = 256
    model = DeemForConditionalGeneration(DeemConfig(**config, with_image_decoder=False))
    model.processor = DeemProcessor.from_pretrained(TINY)
    model.processor.image_processor.size = image_size
    model.save_pretrained(folder)  # with its processor
    return sum(p.numel() for p in model.parameters())


def pope_like(folder: Path, images: int, per_image: int) -> list[Question]:
    """COCO-sized JPEGs of noise, `per_image` POPE questions each."""
    rng = np.random.default_rng(0)
    questions = []
    for index in range(images):
        path = folder / f"{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        for name in (OBJECTS * per_image)[index : index + per_image]:
            questions.append(Question(len(questions), str(path), POPE_QUESTION.format(object=name)))
    return questions


def timed(answerer: ImageQuestionAnswerer, batch_size: int, questions: list[Question]) -> tuple[float, float, dict]:
    """CPU time and wall time of answering every question at `batch_size`, and the answers."""
    answerer.batch_size = batch_size
    cpu, wall = time.process_time(), time.perf_counter()
    answers = answerer.answer(questions, show_progress=False)
    return time.process_time() - cpu, time.perf_counter() - wall, answers


def measure(size: str, args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"eval_batching_{size}_"))
    parameters = build_model(size, folder / "model")
    questions = pope_like(folder, args.images, args.per_image)
    answerer = ImageQuestionAnswerer(folder / "model", max_new_tokens=args.max_new_tokens, task="pope")
    arms = {"batch 1": 1, f"batch {args.batch_size}": args.batch_size}
    reference = None
    for batch_size in arms.values():
        for _ in range(2):
            *_, answers = timed(answerer, batch_size, questions)  # warm-up
        reference = reference or answers
        assert answers == reference, "the batch size changed the answers"
    times: dict[str, list[float]] = {name: [] for name in arms}
    walls: dict[str, list[float]] = {name: [] for name in arms}
    for pair in range(args.pairs):
        for name in (list(arms) if pair % 2 == 0 else list(reversed(arms))):
            seconds, wall, answers = timed(answerer, arms[name], questions)
            assert answers == reference, "the batch size changed the answers"
            times[name].append(seconds)
            walls[name].append(wall)
    one, many = times.values()
    ratios = [a / b for a, b in zip(one, many)]
    return {
        "parameters": parameters,
        "images": args.images,
        "questions": len(questions),
        "median_run_s": {name: statistics.median(t) for name, t in times.items()},
        "questions_per_s": {name: len(questions) / statistics.median(t) for name, t in times.items()},
        "runs_s": times,
        "median_wall_s": {name: statistics.median(t) for name, t in walls.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "same_answers": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["tiny", "small"], default=["tiny", "small"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--per-image", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="as `python -m evaluation pope`")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/eval_batching.json")
    args = parser.parse_args()
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2: it is compared with batch 1")
    torch.set_num_threads(args.threads)
    result = {"setup": f"POPE-like: {args.images} images (640x480 JPEG) x {args.per_image} questions, paper prompt, "
                       f"greedy, {args.max_new_tokens} new tokens (random weights: never an early EOS), CPU time",
              "threads": args.threads, "pairs": args.pairs, "sizes": {}}
    for size in args.sizes:
        result["sizes"][size] = measure(size, args)
    many = f"batch {args.batch_size}"
    print(f"{'size':6s} {'parameters':>11s} {'batch 1 (q/s)':>14s} {many + ' (q/s)':>14s} {'ratio median':>13s} "
          f"{'ratio min':>10s}")
    for size, row in result["sizes"].items():
        print(f"{size:6s} {row['parameters']:11,d} {row['questions_per_s']['batch 1']:14.1f} "
              f"{row['questions_per_s'][many]:14.1f} {row['ratio_median']:13.2f} {row['ratio_min']:10.2f}")
    print(f"throughput {many} / batch 1 ({args.pairs} interleaved pairs, {args.threads} thread, same answers)")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
