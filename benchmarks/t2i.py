"""P3 text-to-image: `model.generate(..., generation_mode="image")` against diffusers' `StableDiffusionPipeline` run
by hand on the same UNet, VAE and scheduler with the condition passed as `prompt_embeds`.

Arms, interleaved per config in one process, each seeded the same (so the images must match, which is checked):
  DEEM generate          `model.generate(input_ids, generation_mode="image", num_inference_steps, guidance_scale,
                         generator, output_type="pt")` from a text prompt (the LLM prefill, the condition
                         resampler, then sampling with the learned negative as the unconditional branch)
  pipeline               `StableDiffusionPipeline(vae, unet, DDPMScheduler(same config), no text encoder)` called
                         with `prompt_embeds` = the precomputed condition and `negative_prompt_embeds` = the learned
                         negative: the floor for the sampling part
  LLM prefill            `model.prompt_conditions(input_ids)` alone (what DEEM adds before sampling)
Target: DEEM generate ≤ 1.05 × pipeline + the LLM prefill.

    python -m benchmarks.t2i [--configs tiny bench] [--steps 25] [--batch-size 1] [--rounds 9] [--profile]
    python -m benchmarks.t2i --configs tiny --steps 2 --rounds 1        # CI smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

from benchmarks.common import (
    build_model,
    command_line,
    config_label,
    load_config,
    machine,
    medians,
    op_gap,
    print_op_gap,
    print_table,
    ratio_stats,
    run_interleaved,
    setup_threads,
    text_ids,
    write_json,
)

GUIDANCE = 3.5  # the paper's


def measure(config_name: str, args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(config_name)
    model = build_model(config)
    prompt = torch.tensor([[config.bos_token_id] + text_ids(config, args.prompt_tokens)] * args.batch_size)
    mask = torch.ones_like(prompt)
    size = config.decoder_image_size
    pipeline = StableDiffusionPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
        scheduler=DDPMScheduler.from_config(model.noise_scheduler.config), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        condition = model.prompt_conditions(prompt, mask)
    negative = model.negative_condition.weight.expand_as(condition)
    images: dict[str, torch.Tensor] = {}

    def deem() -> None:
        images["deem"] = model.generate(input_ids=prompt, attention_mask=mask, generation_mode="image",
                                        num_inference_steps=args.steps, guidance_scale=GUIDANCE,
                                        generator=torch.Generator().manual_seed(0), output_type="pt")

    @torch.no_grad()
    def plain() -> None:
        images["pipeline"] = pipeline(prompt_embeds=condition, negative_prompt_embeds=negative, height=size,
                                      width=size, num_inference_steps=args.steps, guidance_scale=GUIDANCE,
                                      generator=torch.Generator().manual_seed(0), output_type="pt").images

    @torch.no_grad()
    def prefill() -> None:
        model.prompt_conditions(prompt, mask)

    arms = {"DEEM generate": deem, "pipeline": plain, "LLM prefill": prefill}
    times = run_interleaved(arms, args.rounds)
    difference = float((images["deem"] - images["pipeline"]).abs().max())
    if difference > 1e-5:
        raise AssertionError(f"DEEM's images differ from the pipeline's by {difference}")
    floor = [p + q for p, q in zip(times["pipeline"], times["LLM prefill"])]
    result = {"config": config_label(config_name), "batch_size": args.batch_size, "steps": args.steps,
              "prompt_tokens": prompt.shape[1], "image_size": size, "median_s": medians(times), "runs_s": times,
              "max_image_difference": difference,
              "deem_over_pipeline_plus_prefill": ratio_stats(times["DEEM generate"], floor),
              "deem_over_pipeline": ratio_stats(times["DEEM generate"], times["pipeline"])}
    if args.profile:
        result["op_gap"] = {"DEEM generate vs pipeline": op_gap(deem, plain)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "bench"])
    parser.add_argument("--steps", type=int, default=25, help="DDPM steps (the paper samples with 250)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", default="outputs/benchmarks/t2i.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    results = [measure(name, args) for name in args.configs]
    rows = []
    for r in results:
        med, ratio = r["median_s"], r["deem_over_pipeline_plus_prefill"]
        rows.append([r["config"], med["DEEM generate"], med["pipeline"], med["LLM prefill"],
                     f"×{ratio['median']:.3f} (min ×{ratio['min']:.3f})",
                     f"×{r['deem_over_pipeline']['median']:.3f}"])
    print_table(["config", "DEEM generate s", "pipeline s", "LLM prefill s", "DEEM / (pipeline + prefill)",
                 "DEEM / pipeline"], rows,
                f"text-to-image, {args.batch_size} × {results[0]['prompt_tokens']}-token prompt, DDPM {args.steps} "
                f"steps, guidance {GUIDANCE}, median CPU s of {args.rounds} interleaved rounds, {args.threads} thread; "
                "identical images")
    met = all(r["deem_over_pipeline_plus_prefill"]["median"] <= 1.05 for r in results)
    print(f"target DEEM generate ≤ 1.05 × (pipeline + LLM prefill): {'met' if met else 'MISSED'}")
    for r in results:
        for name, gap in r.get("op_gap", {}).items():
            print_op_gap(f"{r['config']}, {name}", gap)
    write_json(args.output, {"command": command_line(), "machine": machine(args.threads), "results": results,
                             "target_met": met})


if __name__ == "__main__":
    main()
