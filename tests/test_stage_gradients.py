"""Every parameter a stage trains receives a gradient in one step of that stage: no dead trainable parameters
(they waste optimizer state, and DDP without find_unused_parameters refuses them)."""

import pytest
import torch
from conftest import BOS, EOS, image_slot, make_batch

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config
from trainers.stages import STAGES, apply_stage


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_parameter_a_stage_trains_gets_a_gradient(stage):
    recipe = STAGES[stage]
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(tiny_config(with_image_decoder=recipe.with_image_decoder))
    apply_stage(model, stage)
    model.train()
    batch = make_batch([[BOS, 10] + image_slot() + [11, 12] + image_slot() + [13, EOS]])  # the 2nd image has NIP
    if not recipe.with_image_decoder:
        batch.pop("decoder_pixel_values")
    model(**batch).loss.backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_the_convnext_classifier_head_is_not_built():
    model = DeemForConditionalGeneration(tiny_config())
    assert not any(name.startswith("vision_tower.trunk.head.") for name, _ in model.named_parameters())
