"""deem-7b built on the meta device has the paper's part sizes."""

from pathlib import Path

import torch

from modeling_deem import DeemConfig, DeemForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_deem_7b_part_sizes():
    config = DeemConfig.from_pretrained(ROOT / "hub_configs" / "deem-7b")
    with torch.device("meta"):
        model = DeemForConditionalGeneration(config)
    assert abs(count(model.unet) / 1e6 - 865.9) < 1.0  # SD 2.1 base UNet
    assert abs(count(model.vae) / 1e6 - 83.65) < 0.5  # SD VAE
    assert abs(count(model.language_model) / 1e9 - 6.74) < 0.01  # Vicuna-7B (+2 token rows)
    assert abs(count(model.vision_tower.trunk) / 1e6 - 87.6) < 0.5  # ConvNeXt-B trunk

    frozen_in_stage_one = ("language_model.", "unet.", "vae.")
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(frozen_in_stage_one))
    embeddings = count(model.get_input_embeddings()) + count(model.get_output_embeddings())
    print(f"\nstage-I trainable: {trainable / 1e6:.1f}M (image side, resamplers, heads); "
          f"{(trainable + embeddings) / 1e6:.1f}M with the LLM's input/output embeddings; paper: 494.9M")
    assert 200e6 < trainable < 300e6
    # The paper's 494.9M matches the image side plus the (re-sized) embedding and output layers within 1 %.
    assert abs((trainable + embeddings) / 494.9e6 - 1) < 0.01
