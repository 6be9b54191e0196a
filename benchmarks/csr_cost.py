"""P1 CSR cost: a training step with vs without CSR, against the irreducible cost of CSR (the UNet's forward and
backward over the CSR samples alone), in stage I (NIP kept) and stage II (NTP + CSR), plus NIP and CSR denoised
in one UNet call (config.fuse_diffusion_losses, the default) vs two.

Arms, all interleaved in one process (order rotated and reversed per round, the same RNG seed per round for every
arm), CPU time, full steps (forward, backward, AdamW over what the stage trains):
  stage I   CSR on (fused)     csr_loss_weight 5, NIP 5, NIP and CSR samples in one UNet call
            CSR on (unfused)   the same in two UNet calls
            CSR off            csr_loss_weight 0 (NIP 5 kept)
            UNet alone         UNet forward + backward (input gradients only: the UNet is frozen) over the batch's
                               CSR samples, from precomputed latents and a leaf condition: the irreducible cost
            UNet + MMFS        the same through DEEM's denoising call, with the UNet-side MMFS reading each image
  stage II  CSR on / CSR off / UNet alone / UNet + MMFS (NIP is off in stage II)
CSR overhead = step(CSR on) − step(CSR off); it is reported over the irreducible cost, and step(on) / step(off) is
compared with the paper's 1.14× (stage I) and 1.04× (stage II). The ratio depends mostly on how many images a row
holds per token, so a FLOP model of the step (forward counts per part, for deem-7b and the config timed) is printed
for the layout used: `--layout dense` (the benchmarks' 218-token rows: 2 images in stage I, 1 in stage II) or
`--layout paper` (2048-token packed rows: 5 images in stage I, 1 in stage II).

    python -m benchmarks.csr_cost [--config bench] [--layout dense] [--rounds 7] [--threads 1] [--profile]
    python -m benchmarks.csr_cost --config tiny --rounds 1        # CI smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.common import (
    BATCH_ROWS,
    build_model,
    command_line,
    config_label,
    count_flops,
    document_row,
    load_config,
    machine,
    medians,
    op_gap,
    print_op_gap,
    print_table,
    ratio_stats,
    run_interleaved,
    setup_threads,
    training_batch,
    write_json,
)
from modeling_deem.diffusion_deem import encode_latents

PAPER = {"stage1": 1.14, "stage2": 1.04}


# Image density per row: "dense" is the benchmarks' sample (218 tokens: 2 images in stage I, 1 in stage II);
# "paper" is what the paper's ratios imply (see stage_flops): packed 2048-token rows, 5 images in stage I (MMC4
# keeps up to 6 per document), 1 in stage II.
LAYOUTS = {"dense": {"stage1": (2, 218), "stage2": (1, 218)}, "paper": {"stage1": (5, 2048), "stage2": (1, 2048)}}


def stage_rows(config: Any, stage: str, rows: int, layout: str = "dense") -> list[list[int]]:
    """`rows` rows of `images` images and `tokens` tokens: text spread evenly before the images (each image gets
    NIP in stage I), the rest after the last."""
    images, tokens = LAYOUTS[layout][stage]
    slot = config.num_image_tokens + 1
    text = 20 if layout == "dense" else (tokens - 2 - images * slot) // (images + 1)
    tail = tokens - 2 - images * (slot + text)
    return [document_row(config, images, text=text, tail=tail)] * rows


def stage_flops(counts: dict[str, Any], stage: str, layout: str) -> dict[str, float]:
    """A FLOP model of one stage-I/II step per row, from `bench_config.part_flops`' forward counts per sample
    (meta device): a frozen part costs 2 × forward (forward + input gradients), a trained part 3 ×; the VAE runs
    without gradients. Stage I: LLM frozen, image side trained, NIP + CSR per image; stage II: LLM trained,
    ConvNeXt frozen, CSR only. Attention's growth with length and the NIP condition resampler are left out.
    Returns the step FLOPs with and without CSR and their ratio."""
    images, tokens = LAYOUTS[layout][stage]
    parts = counts["flops"]
    per_token_llm = parts["LLM (plain, no MMFS)"] / counts["tokens"]
    per_unet = (parts["UNet (plain, no MMFS)"] + parts["UNet-side MMFS"]) / counts["unet_samples"]
    per_vae, per_image = parts["VAE encoder"] / counts["images"], parts["ConvNeXt + Q-Former"] / counts["images"]
    if stage == "stage1":
        base = 2 * per_token_llm * tokens + 3 * per_image * images + 2 * per_unet * images + per_vae * images
        extra = 2 * per_unet * images
    else:
        base = 3 * per_token_llm * tokens + 2.5 * per_image * images
        extra = 2 * per_unet * images + per_vae * images
    return {"off": base, "on": base + extra, "on_over_off": (base + extra) / base}


def arms_for(config: Any, stage: str, rows: int, layout: str) -> tuple[dict[str, Any], dict[str, Any]]:
    model = build_model(config, stage)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = training_batch(config, stage_rows(config, stage, rows, layout))
    recipe_nip = model.config.nip_loss_weight

    def step(csr: float, fuse: bool = True) -> None:
        model.config.csr_loss_weight, model.config.nip_loss_weight = csr, recipe_nip
        model.config.fuse_diffusion_losses = fuse
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    # The irreducible part: CSR's UNet samples alone, inputs precomputed outside the timed region.
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"], return_dict=True)
        latents = encode_latents(model.vae, batch["decoder_pixel_values"])

    def leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.detach().clone().requires_grad_(True)

    condition = leaf(features.condition_embeds)
    leaf_features = type(features)(**{k: leaf(v) if isinstance(v, torch.Tensor) else v for k, v in features.items()})

    def unet_alone() -> None:
        condition.grad = None
        part = model._csr_part(latents, condition, None)
        prediction = model.unet(part.noisy, part.timesteps, encoder_hidden_states=condition).sample
        F.mse_loss(prediction, part.target).backward()

    def unet_with_mmfs() -> None:
        for value in leaf_features.values():
            if isinstance(value, torch.Tensor):
                value.grad = None
        part = model._csr_part(latents, leaf_features.condition_embeds, None)
        model._denoise([part], leaf_features).mean().backward()

    arms: dict[str, Any] = {}
    if stage == "stage1":
        arms["CSR on (fused)"] = lambda: step(5.0, True)
        arms["CSR on (unfused)"] = lambda: step(5.0, False)
    else:
        arms["CSR on"] = lambda: step(5.0)
    arms["CSR off"] = lambda: step(0.0)
    arms["UNet alone"] = unet_alone
    if model.config.decoder_mmfs:
        arms["UNet + MMFS"] = unet_with_mmfs
    images = batch["pixel_values"].shape[0]
    info = {"rows": rows, "tokens_per_row": batch["input_ids"].shape[1], "images": images, "csr_samples": images,
            "nip_samples": images if stage == "stage1" else 0,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return arms, info


def summarize(stage: str, times: dict[str, list[float]], info: dict[str, Any]) -> dict[str, Any]:
    on = "CSR on (fused)" if stage == "stage1" else "CSR on"
    med = medians(times)
    overhead = [a - b for a, b in zip(times[on], times["CSR off"])]
    overhead_median = statistics.median(overhead)
    result = {"info": info, "median_s": med, "step_s": times,
              "step_on_over_off": ratio_stats(times[on], times["CSR off"]), "paper_on_over_off": PAPER[stage],
              "csr_overhead_s": overhead_median,
              "overhead_over_unet_alone": overhead_median / med["UNet alone"]}
    if "UNet + MMFS" in med:
        result["overhead_over_unet_with_mmfs"] = overhead_median / med["UNet + MMFS"]
    if stage == "stage1":
        result["unfused_over_fused"] = ratio_stats(times["CSR on (unfused)"], times["CSR on (fused)"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench", help="tiny, bench, or a config folder")
    parser.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    parser.add_argument("--rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="dense",
                        help="dense: 218-token rows (2 images in stage I, 1 in II); paper: 2048-token rows (5 / 1)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="torch.profiler: where CSR on spends more than off")
    parser.add_argument("--output", default="outputs/benchmarks/csr_cost.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    config = load_config(args.config)
    label = config_label(args.config)
    result: dict[str, Any] = {"command": command_line(), "machine": machine(args.threads), "config": label,
                              "rounds": args.rounds, "layout": args.layout, "stages": {}}
    from benchmarks.bench_config import part_flops

    part_counts = {"deem-7b": part_flops(load_config("7b")), label: part_flops(config)}
    for stage in args.stages:
        arms, info = arms_for(config, stage, args.rows, args.layout)
        times = run_interleaved(arms, args.rounds)
        summary = summarize(stage, times, info)
        torch.manual_seed(0)
        flops = {name: count_flops(arm) for name, arm in arms.items()}
        on = "CSR on (fused)" if stage == "stage1" else "CSR on"
        summary["flops"] = flops
        summary["flops_on_over_off"] = flops[on] / flops["CSR off"]
        summary["flop_model"] = {name: stage_flops(part_counts[name], stage, args.layout) for name in part_counts}
        result["stages"][stage] = summary
        med = summary["median_s"]
        print_table(["arm", "median CPU s", "× CSR off", "GFLOPs (counted)", "GFLOP/s"],
                    [[name, med[name], med[name] / med["CSR off"], flops[name] / 1e9, flops[name] / 1e9 / med[name]]
                     for name in med],
                    f"{label} {stage}: {info['rows']} rows × {info['tokens_per_row']} tokens, {info['images']} images "
                    f"({info['nip_samples']} NIP + {info['csr_samples']} CSR UNet samples), {args.rounds} rounds, "
                    f"{args.threads} thread")
        ratio = summary["step_on_over_off"]
        line = (f"  step with / without CSR: median ×{ratio['median']:.3f} (min ×{ratio['min']:.3f}); FLOPs "
                f"×{summary['flops_on_over_off']:.3f}; paper ×{PAPER[stage]:.2f}. CSR overhead {summary['csr_overhead_s']:.3f} s = "
                f"{summary['overhead_over_unet_alone']:.2f} × UNet alone")
        if "overhead_over_unet_with_mmfs" in summary:
            line += f", {summary['overhead_over_unet_with_mmfs']:.2f} × UNet + MMFS"
        print(line)
        model = summary["flop_model"]
        print(f"  FLOP model of the step with / without CSR at this layout (frozen parts 2 × forward, trained 3 ×): "
              f"deem-7b ×{model['deem-7b']['on_over_off']:.3f}, {label} ×{model[label]['on_over_off']:.3f}")
        if stage == "stage1":
            fused = summary["unfused_over_fused"]
            print(f"  two UNet calls / one (fuse_diffusion_losses): median ×{fused['median']:.3f} "
                  f"(min ×{fused['min']:.3f})")
        if args.profile:
            gap = op_gap(arms[on], arms["CSR off"])
            summary["op_gap"] = gap
            print_op_gap(f"  {stage}, {on} vs CSR off", gap)
        print()
    write_json(args.output, result)


if __name__ == "__main__":
    main()
