"""deem-7b built on the meta device has the paper's part sizes, and stage I trains the paper's 494.9M."""

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from modeling_deem import DeemConfig, DeemForConditionalGeneration
from trainers.stages import apply_stage

ROOT = Path(__file__).resolve().parents[1]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def deem_7b() -> DeemForConditionalGeneration:
    config = DeemConfig.from_pretrained(ROOT / "hub_configs" / "deem-7b")
    with torch.device("meta"):
        return DeemForConditionalGeneration(config)


def test_deem_7b_part_sizes(deem_7b):
    model = deem_7b
    assert abs(count(model.unet) / 1e6 - 865.9) < 1.0  # SD 2.1 base UNet
    assert abs(count(model.vae) / 1e6 - 83.65) < 0.5  # SD VAE
    assert abs(count(model.vision_tower.trunk) / 1e6 - 87.6) < 0.5  # ConvNeXt-B trunk
    llm_own = sum(p.numel() for n, p in model.language_model.named_parameters() if ".mmfs." not in n)
    assert abs(llm_own / 1e9 - 6.74) < 0.01  # Vicuna-7B (+3 token rows)


def test_stage_one_trains_the_papers_494_9m(deem_7b):
    """The authors' code counted at the paper's sizes: image side + MMFS on both sides + new-token parts."""
    model = deem_7b
    apply_stage(model, "stage1")
    parts: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            parts["language_model.layers.*.mmfs" if ".mmfs." in name else name.split(".")[0]] += parameter.numel()
    total = sum(parts.values())
    print("\nstage-I trainable parameters of deem-7b")
    for part, size in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {part:32s} {size / 1e6:9.3f}M")
    print(f"  {'total':32s} {total / 1e6:9.3f}M   (paper, Table 1: 494.9M)")
    assert abs(total / 494.9e6 - 1) < 0.005
    # MMFS exactly as the authors' modules: 8 LLM layers × 25,057,969 and 13 UNet blocks (2q² + 1871q + 1,052,480
    # for their widths: 4 × 320, 3 × 640, 6 × 1280).
    assert parts["language_model.layers.*.mmfs"] == 8 * 25_057_969
    assert parts["decoder_mmfs"] == sum(2 * q * q + 1871 * q + 1_052_480 for q in [320] * 4 + [640] * 3 + [1280] * 6)
    assert parts["image_start_embedding"] == 4096 and parts["new_token_head"] == 3 * 4096 + 3
    assert abs(parts["vision_tower"] / 1e6 - 90.59) < 0.01  # trunk 87.57 + adapters 3.02
    assert abs(parts["visual_resampler"] / 1e6 - 101.66) < 0.01  # Q-Former + queries (+ QK norms)
    assert abs((parts["image_to_text"] + parts["image_to_condition"]) / 1e6 - 3.94) < 0.01
    assert parts["context_proj"] == 4096 * 4096 + 4096
    assert abs((parts["condition_resampler"] + parts["negative_condition"]) / 1e6 - 23.25) < 0.01
    assert not any(part.startswith(("unet", "vae")) for part in parts)
