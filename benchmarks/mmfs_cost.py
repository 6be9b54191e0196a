"""What MMFS costs: parameters and stage-I training-step time with MMFS vs without, side by side in one process.

The two models share every other weight (same seed); steps are interleaved A/B with the order alternated, after a
warm-up, at a fixed thread count; CPU time of this process per step. Prints a table and writes JSON.

    .venv/bin/python benchmarks/mmfs_cost.py [--pairs 9] [--threads 1] [--output outputs/mmfs_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import BOS, EOS, image_slot, make_batch  # noqa: E402

from modeling_deem import DeemForConditionalGeneration  # noqa: E402
from modeling_deem.tiny import tiny_config  # noqa: E402
from trainers.stages import apply_stage  # noqa: E402


def build(mmfs: bool) -> tuple[DeemForConditionalGeneration, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(tiny_config(mmfs=mmfs)).train()
    apply_stage(model, "stage1")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def step(model: DeemForConditionalGeneration, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    start = time.process_time()
    optimizer.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/mmfs_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    rows = [[BOS, 10, 11, 12] + image_slot() + [13, 14] + image_slot() + [EOS]] * 4
    batch = make_batch(rows)
    sides = {"with MMFS": build(True), "without MMFS": build(False)}
    for model, optimizer in sides.values():
        for _ in range(2):
            step(model, optimizer, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    for pair in range(args.pairs):
        order = list(sides) if pair % 2 == 0 else list(reversed(sides))
        for name in order:
            torch.manual_seed(pair)
            times[name].append(step(*sides[name], batch))
    ratios = [a / b for a, b in zip(times["with MMFS"], times["without MMFS"])]
    result = {
        "config": "deem-tiny (hub_configs/deem-tiny sizes), stage I, batch 4 × 2 images, CPU",
        "threads": args.threads,
        "pairs": args.pairs,
        "parameters": {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in sides.items()},
        "trainable_stage1": {name: sum(p.numel() for p in model.parameters() if p.requires_grad)
                             for name, (model, _) in sides.items()},
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
    }
    print(f"{'':16s} {'parameters':>12s} {'stage-I trainable':>18s} {'median step (CPU s)':>20s}")
    for name in sides:
        print(f"{name:16s} {result['parameters'][name]:12,d} {result['trainable_stage1'][name]:18,d} "
              f"{result['median_step_s'][name]:20.4f}")
    print(f"step time with / without MMFS: median ×{result['ratio_median']:.3f}, min ×{result['ratio_min']:.3f} "
          f"({args.pairs} interleaved pairs, {args.threads} thread)")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
