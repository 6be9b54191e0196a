"""P4 interleaved generation: the time of a document with k = 1, 2, 4 generated images.

`generate_interleaved` keeps its KV cache from segment to segment, encodes each image once and reads each image's
condition from states the text generation already made, so each image should add the same time: the target is a
cost linear in k. Arms (interleaved in one process, 1 thread, CPU time): one document per k, the same prompt, a
logits processor forcing 3 text tokens, then `<|startofimage|>`, k times, then EOS. Reported: median seconds per
document, the cost of each added image (t(k) − t(k/2)) / (k/2), and the linearity ratio
(t(4) − t(2)) / (2 · (t(2) − t(1))) — 1.0 when every image costs the same.

    python -m benchmarks.interleaved [--configs tiny] [--steps 4] [--rounds 7]
    python -m benchmarks.interleaved --configs tiny --steps 1 --rounds 1        # CI smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from benchmarks.common import (
    build_model,
    command_line,
    config_label,
    load_config,
    machine,
    medians,
    print_table,
    run_interleaved,
    setup_threads,
    text_ids,
    write_json,
)

KS = (1, 2, 4)


class ForceImages(LogitsProcessor):
    """3 text tokens after the prompt or an image slot, then `<|startofimage|>`; after `images` of them, EOS."""

    def __init__(self, config: Any, prompt_length: int, images: int) -> None:
        self.soi, self.img, self.eos = config.image_start_token_id, config.image_token_id, config.eos_token_id
        self.prompt_length, self.images = prompt_length, images

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        row = input_ids[0]
        made = int((row[self.prompt_length:] == self.soi).sum())
        slots = (row == self.img).nonzero()
        since = len(row) - 1 - max(int(slots[-1]) if len(slots) else -1, self.prompt_length - 1)
        scores[:, [self.soi, self.eos]] = -float("inf")
        if since == 3:
            scores[:, :] = -float("inf")
            scores[:, self.soi if made < self.images else self.eos] = 0
        return scores


def measure(name: str, steps: int, rounds: int) -> dict[str, Any]:
    config = load_config(name)
    model = build_model(config).eval()
    prompt = torch.tensor([[config.bos_token_id, *text_ids(config, 8)]])

    def document(k: int):
        return lambda: model.generate_interleaved(
            prompt, max_new_tokens=10_000, max_images=k, num_inference_steps=steps, do_sample=False,
            logits_processor=LogitsProcessorList([ForceImages(config, prompt.shape[1], k)]),
            generator=torch.Generator().manual_seed(0))

    made = [sum(not isinstance(part, torch.Tensor) for part in document(k)()) for k in KS]
    if made != list(KS):
        raise RuntimeError(f"expected {list(KS)} images per document, got {made}")
    times = run_interleaved({f"k={k}": document(k) for k in KS}, rounds=rounds, warmup=0)  # `made` above warmed up
    median = medians(times)
    t1, t2, t4 = (median[f"k={k}"] for k in KS)
    return {"config": config_label(name), "inference_steps": steps, "seconds": median, "times": times,
            "added_image_seconds": {"2nd": t2 - t1, "3rd-4th (each)": (t4 - t2) / 2},
            "linearity": (t4 - t2) / (2 * (t2 - t1)) if t2 > t1 else float("nan")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny"])
    parser.add_argument("--steps", type=int, default=4, help="inference steps per generated image")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/benchmarks/interleaved.json")
    args = parser.parse_args(argv)
    setup_threads(args.threads)
    results = [measure(name, args.steps, args.rounds) for name in args.configs]
    print_table(["config", *(f"t(k={k}) s" for k in KS), "2nd image s", "3rd/4th image s", "linearity"],
                [[r["config"], *(r["seconds"][f"k={k}"] for k in KS), r["added_image_seconds"]["2nd"],
                  r["added_image_seconds"]["3rd-4th (each)"], r["linearity"]] for r in results],
                title="P4 interleaved generation: a document with k generated images (target: linear in k)")
    result = {"command": command_line(), "machine": machine(args.threads), "results": results}
    print(f"wrote {write_json(args.output, result)}")
    return result


if __name__ == "__main__":
    main()
