"""Shared fixtures: offline hub, a seeded tiny DEEM, and inputs that respect its token layout."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_deem import DeemForConditionalGeneration  # noqa: E402
from modeling_deem.tiny import tiny_config  # noqa: E402
from processing import DeemProcessor  # noqa: E402

BOS, EOS, PAD, SOI, IMG = 1, 2, 3, 4, 5
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "hub_configs" / "deem-tiny"
NUM_IMAGE_TOKENS = 77


def image_slot() -> list[int]:
    return [SOI] + [IMG] * NUM_IMAGE_TOKENS


def make_batch(rows: list[list[int]], pad_left: bool = False) -> dict[str, torch.Tensor]:
    """Pads token rows into input_ids/attention_mask and makes matching random encoder/decoder views."""
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for row in rows:
        pad = [PAD] * (width - len(row))
        ids.append(pad + row if pad_left else row + pad)
        ones, zeros = [1] * len(row), [0] * len(pad)
        mask.append(zeros + ones if pad_left else ones + zeros)
    input_ids = torch.tensor(ids)
    num_images = int((input_ids == IMG).sum()) // NUM_IMAGE_TOKENS
    labels = input_ids.masked_fill(torch.tensor(mask) == 0, -100)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.tensor(mask),
        "pixel_values": torch.randn(num_images, 3, 64, 64),
        "decoder_pixel_values": torch.rand(num_images, 3, 32, 32) * 2 - 1,
        "labels": labels,
    }


@pytest.fixture
def tiny_model() -> DeemForConditionalGeneration:
    torch.manual_seed(0)
    return DeemForConditionalGeneration(tiny_config())


@pytest.fixture
def interleaved_batch() -> dict[str, torch.Tensor]:
    """Two documents: one with a leading image (no NIP target) and a later one; one with a single inner image."""
    torch.manual_seed(1)
    rows = [
        [BOS] + image_slot() + [10, 11, 12] + image_slot() + [13, EOS],
        [BOS, 20, 21, 22, 23] + image_slot() + [24, EOS],
    ]
    return make_batch(rows)


@pytest.fixture(scope="session")
def processor() -> DeemProcessor:
    """The tiny processor shipped in hub_configs/deem-tiny."""
    return DeemProcessor.from_pretrained(TINY)
