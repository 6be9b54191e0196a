"""Side by side in one run: a stage-I training step (NTP + NIP + CSR) with each target image VAE-encoded once for
both diffusion losses, against the same step plus the second encoding the original code did (NIP and CSR each
encoded the image). Prints the time ratio.

Run: .venv/bin/python benchmarks/vae_encode_once.py [--decoder-size 256] [--images 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from modeling_deem import DeemForConditionalGeneration  # noqa: E402
from modeling_deem.diffusion_deem import encode_latents  # noqa: E402
from modeling_deem.tiny import tiny_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    # The tiny model with an SD-shaped VAE (4 levels, 8× down-sampling), so encoding costs what it does in SD.
    vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 64, 128, 128],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "layers_per_block": 2, "norm_num_groups": 32, "sample_size": args.decoder_size, "scaling_factor": 0.18215}
    config = tiny_config(vae_config=vae, decoder_image_size=args.decoder_size)
    config.unet_config["sample_size"] = args.decoder_size // 8
    model = DeemForConditionalGeneration(config).train()
    slot = [4] + [5] * 77
    rows = [[1, 10 + i, 11] + slot + [2] for i in range(args.images)]
    batch = {"input_ids": torch.tensor(rows), "labels": torch.tensor(rows),
             "pixel_values": torch.randn(args.images, 3, 64, 64),
             "decoder_pixel_values": torch.rand(args.images, 3, args.decoder_size, args.decoder_size) * 2 - 1}

    def step(extra_encode: bool) -> float:
        start = time.perf_counter()
        if extra_encode:  # the original code's second VAE pass over the same images
            encode_latents(model.vae, batch["decoder_pixel_values"])
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(False)  # warm-up
    once = min(step(False) for _ in range(args.repeats))
    twice = min(step(True) for _ in range(args.repeats))
    print(f"{args.images} images at {args.decoder_size}px: VAE once {once:.3f}s/step, twice {twice:.3f}s/step, "
          f"speed-up x{twice / once:.2f}")


if __name__ == "__main__":
    main()
