"""deem-bench: a DEEM between deem-tiny and deem-7b whose per-sample LLM : UNet compute ratio is deem-7b's.

The tiny model is all overhead and the 7B does not fit a CPU, so the other benchmarks time `hub_configs/deem-bench`:
the paper's structure (Llama LLM with MMFS every 4th layer, ConvNeXt, Q-Former, SD-shaped UNet with 4 levels and
cross-attention in 3, SD-shaped VAE with 8× down-sampling, 77 image tokens) at sizes where a stage-I step takes
about 1–2 s on one CPU thread. The sizes are chosen so that the forward FLOPs of the LLM over one training sample
divided by the forward FLOPs of the UNet over that sample's denoising (NIP + CSR: 2 UNet samples per image) stay
within 2× of deem-7b's (Vicuna-7B vs the SD 2.1 base UNet at 512 px). FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` on the meta device (no weights allocated, so the 7B is counted too).

    python -m benchmarks.bench_config                 # FLOPs table + ratios, and stage-I step time on deem-bench
    python -m benchmarks.bench_config --write         # (re)write hub_configs/deem-bench from bench_config_dict()
    python -m benchmarks.bench_config --quick         # FLOPs, then 1 timed step of deem-tiny (CI smoke)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from typing import Any

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    BATCH_ROWS,
    CONFIGS,
    ROOT,
    SAMPLE_IMAGES,
    build_model,
    command_line,
    cpu_seconds,
    document_row,
    load_config,
    machine,
    print_table,
    setup_threads,
    training_batch,
    write_json,
)
from modeling_deem import DeemConfig
from modeling_deem.tiny import tiny_config_dict

BENCH = CONFIGS["bench"]
TINY = CONFIGS["tiny"]
SAMPLE_TEXT = 20  # text tokens before each image (common.document_row's default)


def bench_config_dict() -> dict[str, Any]:
    """deem-bench's `DeemConfig` arguments: deem-tiny's tokenizer ids, the paper's shapes at small widths.

    LLM: Llama, hidden 320, 8 layers (MMFS in layers 0 and 4, as every 4th layer of Vicuna's 32), MLP ratio 2.6875
    as Vicuna-7B. UNet: SD 2.1's layout (4 levels, 2 layers per block, linear projections, cross-attention in the
    first 3) at 3/20 of its widths (48–192 channels). Images: encoder 128 px (ConvNeXt maps 32²…4²), decoder
    128 px (16² latents). Image features 64 wide (1/4 of the LLM's width, as 1024 is of 4096), which also keeps
    the UNet-side MMFS's share of the UNet's compute near deem-7b's."""
    config = tiny_config_dict()
    text_hidden, unet_width, cross, features = 320, 48, 320, 64
    config["text_config"].update(hidden_size=text_hidden, intermediate_size=860, num_hidden_layers=8,
                                 num_attention_heads=10, num_key_value_heads=10, head_dim=32,
                                 max_position_embeddings=4096)
    config["vision_config"].update(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128], hidden_size=features,
                                   feature_levels=[3], image_size=128)
    config["resampler_config"].update(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=512, cross_attention_frequency=2, encoder_hidden_size=features)
    config["condition_resampler_config"].update(hidden_size=cross, num_hidden_layers=1, num_attention_heads=5,
                                                intermediate_size=4 * cross, encoder_hidden_size=text_hidden)
    config["unet_config"] = {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [unet_width, 2 * unet_width, 4 * unet_width, 4 * unet_width],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "cross_attention_dim": cross, "attention_head_dim": [1, 2, 4, 4], "norm_num_groups": 8,
        "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0,
    }
    config["vae_config"] = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [16, 32, 64, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 128, "scaling_factor": 0.18215,
    }
    config["mmfs_config"] = {"cross_attention_frequency": 4, "num_heads": 4, "num_points": 4, "max_images": 8,
                             "decoder_max_images": 4}
    config["decoder_image_size"] = 128
    return config


def write_bench_folder() -> None:
    """hub_configs/deem-bench: the config, and deem-tiny's tokenizer and processor at deem-bench's image sizes."""
    BENCH.mkdir(parents=True, exist_ok=True)
    config = DeemConfig(**bench_config_dict())
    config.to_json_file(BENCH / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(TINY / name, BENCH / name)
    processor = json.loads((TINY / "processor_config.json").read_text())
    processor["image_processor"]["size"] = config.vision_config.image_size
    processor["image_processor"]["decoder_size"] = config.decoder_image_size
    (BENCH / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    print(f"wrote {BENCH.relative_to(ROOT)}/ (config.json, processor_config.json, tokenizer files)")


def _flops(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def part_flops(config: DeemConfig) -> dict[str, Any]:
    """Forward FLOPs per training sample (document_row with 2 images) of each part, counted on the meta device."""
    from transformers import AutoModelForCausalLM

    from modeling_deem.diffusion_deem import build_unet, build_vae, encode_latents
    from modeling_deem.mmfs_unet import DeemDecoderMMFS, SkipResidual
    from modeling_deem.resampler_deem import DeemResampler
    from modeling_deem.vision_deem import DeemVisionTower

    tokens = len(document_row(config, SAMPLE_IMAGES, SAMPLE_TEXT))
    images = SAMPLE_IMAGES
    unet_samples = 2 * images  # NIP (every image has text before it) + CSR
    latent = config.decoder_image_size // 8
    size = config.vision_config.image_size
    with torch.device("meta"), torch.no_grad():
        llm = AutoModelForCausalLM.from_config(config.text_config)  # the plain LLM, no MMFS
        unet = build_unet(config.unet_config)
        vae = build_vae(config.vae_config)
        vision = DeemVisionTower(config.vision_config, config.vision_levels())
        resampler = DeemResampler(config.resampler_config, config.num_image_tokens, qk_norm=config.resampler_qk_norm)
        decoder_mmfs = DeemDecoderMMFS(config.unet_config, config.vision_config.hidden_size, config.mmfs_config)
        for module in (llm, unet, vae, vision, resampler, decoder_mmfs):
            module.requires_grad_(False)  # the counter's module tracker would hook leaf parameters' gradients
        hidden = config.text_config.hidden_size
        # A 4-D additive mask keeps transformers' mask code off data-dependent checks (which meta cannot answer).
        counts = {
            "LLM (plain, no MMFS)": _flops(lambda: llm(inputs_embeds=torch.zeros(1, tokens, hidden),
                                                        attention_mask=torch.zeros(1, 1, tokens, tokens),
                                                        use_cache=False)),
            "UNet (plain, no MMFS)": unet_samples * _flops(lambda: unet(
                torch.zeros(1, 4, latent, latent), torch.tensor([500]),
                encoder_hidden_states=torch.zeros(1, config.num_image_tokens, config.cross_attention_dim))),
            "VAE encoder": images * _flops(lambda: encode_latents(
                vae, torch.zeros(1, 3, config.decoder_image_size, config.decoder_image_size))),
        }
        # The UNet-side MMFS reading one image (ConvNeXt maps at the encoder size), as in CSR/NIP: what it adds to
        # the UNet's own forward. (Its residuals are built by hand: the model's helper asks a data-dependent
        # question, "does any sample have an image", that the meta device cannot answer.)
        shapes = [(size // 2 ** (level + 2),) * 2 for level in config.mmfs_config["decoder_levels"]]
        has_image = torch.ones(1, dtype=torch.bool)
        noisy, timestep = torch.zeros(1, 4, latent, latent), torch.tensor([500])
        condition = torch.zeros(1, config.num_image_tokens, config.cross_attention_dim)

        def unet_with_mmfs() -> None:
            context = decoder_mmfs.prepare(
                torch.zeros(1, sum(h * w for h, w in shapes), config.vision_config.hidden_size), shapes, has_image)
            *down, mid = context.values
            unet(noisy, timestep, encoder_hidden_states=condition,
                 down_block_additional_residuals=tuple(SkipResidual(block, values, shapes, has_image)
                                                       for block, values in zip(decoder_mmfs.down, down)),
                 mid_block_additional_residual=SkipResidual(decoder_mmfs.mid, mid, shapes, has_image))

        counts["UNet-side MMFS"] = unet_samples * _flops(unet_with_mmfs) - counts["UNet (plain, no MMFS)"]
        vision_tokens = {}

        def encode() -> None:
            tokens_in = vision(torch.zeros(1, 3, size, size))[0]
            vision_tokens["n"] = tokens_in.shape[1]
            resampler(tokens_in)

        counts["ConvNeXt + Q-Former"] = images * _flops(encode)
    return {"tokens": tokens, "images": images, "unet_samples": unet_samples, "latent": latent,
            "image_size": size, "flops": counts,
            "llm_to_unet": counts["LLM (plain, no MMFS)"] / counts["UNet (plain, no MMFS)"],
            "unet_mmfs_to_unet": counts["UNet-side MMFS"] / counts["UNet (plain, no MMFS)"]}


def time_stage_one(config: DeemConfig, steps: int) -> dict[str, Any]:
    """CPU seconds of full stage-I training steps (forward, backward, AdamW) on BATCH_ROWS sample rows."""
    model = build_model(config, "stage1")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = training_batch(config, [document_row(config, SAMPLE_IMAGES, SAMPLE_TEXT)] * BATCH_ROWS)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    step()  # warm-up
    times = []
    for index in range(steps):
        torch.manual_seed(index)
        times.append(cpu_seconds(step)[0])
    total = _flops(lambda: model(**batch))  # with autograd on: the counter's module tracker needs it
    return {"steps": steps, "step_s": times, "median_step_s": statistics.median(times),
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_stage1": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "forward_flops_per_step": total, "rows": BATCH_ROWS, "tokens_per_row": batch["input_ids"].shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite hub_configs/deem-bench first")
    parser.add_argument("--steps", type=int, default=5, help="timed stage-I steps on deem-bench")
    parser.add_argument("--quick", action="store_true", help="1 timed step of deem-tiny instead (CI smoke)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/benchmarks/bench_config.json")
    args = parser.parse_args()
    setup_threads(args.threads)
    if args.write:
        write_bench_folder()
    current = DeemConfig.from_pretrained(BENCH).to_dict() == DeemConfig(**bench_config_dict()).to_dict()
    counts = {"deem-7b": part_flops(load_config("7b")), "deem-bench": part_flops(load_config("bench"))}
    rows = []
    for name, count in counts.items():
        total = sum(count["flops"].values())
        for part, flops in count["flops"].items():
            rows.append([name, part, flops / 1e9, f"{flops / total:.1%}"])
    print_table(["config", f"forward per sample ({SAMPLE_IMAGES} images, "
                 f"{counts['deem-bench']['tokens']} tokens)", "GFLOPs", "share"], rows)
    seven, bench = counts["deem-7b"]["llm_to_unet"], counts["deem-bench"]["llm_to_unet"]
    factor = bench / seven
    print(f"LLM : UNet FLOPs per sample: deem-7b {seven:.3f}, deem-bench {bench:.3f} "
          f"(bench / 7b = {factor:.2f}; target within 2×: {'met' if 0.5 <= factor <= 2 else 'MISSED'})")
    print(f"UNet-side MMFS : UNet FLOPs: deem-7b {counts['deem-7b']['unet_mmfs_to_unet']:.3f}, deem-bench "
          f"{counts['deem-bench']['unet_mmfs_to_unet']:.3f}")
    step_config = "tiny" if args.quick else "bench"
    timing = time_stage_one(load_config(step_config), 1 if args.quick else args.steps)
    print(f"deem-{step_config} stage-I step ({BATCH_ROWS} rows × {timing['tokens_per_row']} tokens × {SAMPLE_IMAGES} images, "
          f"forward+backward+AdamW, {args.threads} thread): median {timing['median_step_s']:.2f} CPU s over "
          f"{timing['steps']} steps; {timing['parameters'] / 1e6:.1f}M parameters, "
          f"{timing['trainable_stage1'] / 1e6:.2f}M trained in stage I; forward {timing['forward_flops_per_step'] / 1e9:.1f} GFLOPs")
    if not current:
        print("WARNING: hub_configs/deem-bench/config.json differs from bench_config_dict(); run with --write")
    result = {"command": command_line(), "machine": machine(args.threads), "flops": counts,
              "llm_to_unet": {"deem-7b": seven, "deem-bench": bench, "bench_over_7b": factor},
              "within_2x": 0.5 <= factor <= 2, "stage1_step": {"config": f"deem-{step_config}", **timing}, "bench_folder_current": current}
    write_json(args.output, result)


if __name__ == "__main__":
    main()
