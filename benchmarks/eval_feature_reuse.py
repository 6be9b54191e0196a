"""Side by side in one run: answering K questions about one image with the image encoded once (DEEM's
`mm_encoder_outputs` path in `evaluation.answering`) versus once per question. Prints the time ratio.

Run: .venv/bin/python benchmarks/eval_feature_reuse.py [--questions 8] [--image-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from evaluation.answering import ImageQuestionAnswerer  # noqa: E402
from modeling_deem import DeemConfig, DeemForConditionalGeneration  # noqa: E402
from processing import DeemProcessor  # noqa: E402

TINY = ROOT / "hub_configs" / "deem-tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="encoder input size (paper: 256 / 448)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "deem"
    # The tiny model with a full-size image encoder input, so the encoder's share of the work is realistic.
    config = DeemConfig.from_pretrained(TINY)
    config.vision_config.depths, config.vision_config.dims = [2, 2, 6, 2], [40, 80, 160, 320]  # convnext_atto
    DeemForConditionalGeneration(config).save_pretrained(folder)
    processor = DeemProcessor.from_pretrained(TINY)
    processor.image_processor.size = args.image_size
    processor.save_pretrained(folder)
    answerer = ImageQuestionAnswerer(folder, max_new_tokens=4)
    image = Image.new("RGB", (320, 240), (120, 30, 200))
    questions = [f"Is there a thing number {i} in the image?" for i in range(args.questions)]

    def timed(reuse: bool) -> tuple[float, list[str]]:
        answerer.reuses_image_features = reuse
        answerer.answer_image(image, questions)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            answers = answerer.answer_image(image, questions)
        return (time.perf_counter() - start) / args.repeats, answers

    reuse_time, reuse_answers = timed(True)
    plain_time, plain_answers = timed(False)
    assert reuse_answers == plain_answers, "reuse must not change the answers"
    print(f"{args.questions} questions, {args.image_size}px: encode once {reuse_time:.3f}s, "
          f"encode per question {plain_time:.3f}s, speed-up x{plain_time / reuse_time:.2f} (same answers)")


if __name__ == "__main__":
    main()
