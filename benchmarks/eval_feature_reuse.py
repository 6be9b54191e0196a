"""Side by side in one run: answering K questions about one image with the image encoded once (DEEM's
`mm_encoder_outputs` path in `evaluation.answering`) versus once per question.

The two arms run interleaved, the order alternated per pair, after a warm-up, at a fixed thread count; a run's
time is this process's CPU time for all K questions (one batch). Both arms must give the same answers. The tiny
model gets a convnext_atto encoder at 256 px, so the encoder's share of the work is realistic. Prints a table and
writes JSON.

    .venv/bin/python benchmarks/eval_feature_reuse.py [--questions 8] [--image-size 256] [--pairs 7] [--threads 1]
        [--output outputs/benchmarks/eval_feature_reuse.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import (  # noqa: E402
    CONFIGS,
    command_line,
    machine,
    medians,
    print_table,
    ratio_stats,
    run_interleaved,
    setup_threads,
    write_json,
)
from evaluation.answering import ImageQuestionAnswerer  # noqa: E402
from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from processing import DeemProcessor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="encoder input size (paper: 256 / 448)")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/benchmarks/eval_feature_reuse.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "deem"
    config = DeemConfig.from_pretrained(CONFIGS["tiny"])
    config.vision_config.depths, config.vision_config.dims = [2, 2, 6, 2], [40, 80, 160, 320]  # convnext_atto
    model = DeemForConditionalGeneration(config)
    model.processor = DeemProcessor.from_pretrained(CONFIGS["tiny"])
    model.processor.image_processor.size = args.image_size
    model.save_pretrained(folder)  # with its processor
    answerer = ImageQuestionAnswerer(folder, max_new_tokens=args.max_new_tokens)
    image = Image.new("RGB", (320, 240), (120, 30, 200))
    questions = [f"Is there a thing number {i} in the image?" for i in range(args.questions)]
    answers: dict[str, list[str]] = {}

    def run(reuse: bool) -> None:
        answerer.reuses_image_features = reuse
        answers["once" if reuse else "per question"] = answerer.answer_image(image, questions)

    arms = {"encode once": lambda: run(True), "encode per question": lambda: run(False)}
    times = run_interleaved(arms, args.pairs)
    assert answers["once"] == answers["per question"], "reuse must not change the answers"
    med = medians(times)
    ratio = ratio_stats(times["encode per question"], times["encode once"])
    print_table(["arm", "median CPU s", "questions/s"], [[name, med[name], args.questions / med[name]] for name in arms],
                f"{args.questions} questions about one image, {args.image_size} px, {args.max_new_tokens} new tokens, "
                f"{args.pairs} interleaved pairs, {args.threads} thread (same answers)")
    print(f"encode per question / encode once: median ×{ratio['median']:.2f} (min ×{ratio['min']:.2f})")
    write_json(args.output, {"command": command_line(), "machine": machine(args.threads),
                             "questions": args.questions, "image_size": args.image_size, "pairs": args.pairs,
                             "median_s": med, "runs_s": times, "speedup": ratio, "same_answers": True})


if __name__ == "__main__":
    main()
