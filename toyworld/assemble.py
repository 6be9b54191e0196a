"""The toy DEEM before training: the three stage-0 parts joined by `from_components`, as the paper joins
CLIP-ConvNeXt, Vicuna and Stable Diffusion; the resamplers, heads and MMFS start fresh.

    python -m toyworld.assemble --clip outputs/toy/clip --lm outputs/toy/lm --sd outputs/toy/sd \
        --output-dir outputs/toy/deem-init
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from modeling_deem import DeemForConditionalGeneration
from processing import DeemImageProcessor, DeemProcessor

from . import clip as toy_clip

IMAGE_SIZE = 64
# The toy sizes of what DEEM adds (deem-7b's in brackets): 16 image tokens (77), resamplers of width 64 (1024),
# MMFS on every 2nd LLM layer (4th) with 4 heads and 2 points (16, 8).
TOY_DEEM_CONFIG: dict[str, Any] = {
    "num_image_tokens": 16,
    # DEEM's own layers start at std 0.1, not 0.02: each ConvNeXt level's adapter (128 / 256 channels in, 64 out)
    # then gives content as large as the fixed sin-cos position embedding added to it. At 0.02 (right for
    # convnext_base's 1024 channels) content was ~5-20 % of each token after the LayerNorm, the resampler's
    # output hardly varied between images (0.4-1 %), and every trained toy DEEM answered with a constant.
    "initializer_range": 0.1,
    "decoder_image_size": IMAGE_SIZE,
    "vision_config": {"hidden_size": 64, "feature_levels": [2, 3], "image_size": IMAGE_SIZE},
    # BERT's initializer_range 0.02 suits width 768-1024 (a value projection's output then has std ~0.6); at width
    # 64 it leaves the cross-attention's image-dependent part ~0.4 % of the resampler's output, so every image
    # gives nearly the same tokens and DEEM trains blind. 0.1 (~1/sqrt(64)) makes it ~10 %.
    "resampler_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 128, "initializer_range": 0.1},
    "condition_resampler_config": {"num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128,
                                   "initializer_range": 0.1},
    "mmfs_config": {"cross_attention_frequency": 2, "num_heads": 4, "num_points": 2, "attention_dim": 64,
                    "max_images": 4, "decoder_max_images": 2},
}


def assemble(clip: str | Path, language_model: str | Path, diffusion_model: str | Path, seed: int = 0,
             **overrides: Any) -> DeemForConditionalGeneration:
    """DEEM from the toy parts (fresh parts seeded), with its processor attached as `model.processor`."""
    torch.manual_seed(seed)
    model = DeemForConditionalGeneration.from_components(
        language_model=str(language_model), vision_model=toy_clip.model_name(clip),
        diffusion_model=str(diffusion_model), **{**TOY_DEEM_CONFIG, **overrides})
    model.processor = DeemProcessor.from_base_tokenizer(
        str(language_model), image_processor=DeemImageProcessor(size=IMAGE_SIZE, decoder_size=IMAGE_SIZE),
        num_image_tokens=model.config.num_image_tokens)
    return model


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m toyworld.assemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True)
    parser.add_argument("--lm", required=True)
    parser.add_argument("--sd", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = assemble(args.clip, args.lm, args.sd, seed=args.seed)
    model.save_pretrained(args.output_dir)
    print(f"toy DEEM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters -> {args.output_dir}")
    return Path(args.output_dir)


if __name__ == "__main__":
    main()
