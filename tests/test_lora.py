"""LoRA on the LLM keeps what else the stage trains: peft's modules_to_save is computed from the recipe."""

import pytest
import torch
from torch import nn

from modeling_deem import DeemForConditionalGeneration
from modeling_deem.tiny import tiny_config
from trainers.lora import modules_trained_in_full
from trainers.stages import STAGES, parameter_group


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_saved_modules_cover_every_trained_non_lora_parameter_and_nothing_frozen(stage):
    torch.manual_seed(0)
    model = DeemForConditionalGeneration(tiny_config(with_image_decoder=STAGES[stage].with_image_decoder))
    chosen = modules_trained_in_full(model, stage)
    recipe = STAGES[stage]
    covered = tuple(f"{name}." for name in chosen)
    for name, _ in model.named_parameters():
        group = parameter_group(name)
        should_train = group in recipe.learning_rates and group != "language_model"
        assert name.startswith(covered) == should_train, name
    modules = dict(model.named_modules())
    assert not any(isinstance(modules[name], (nn.ModuleList, nn.ModuleDict)) for name in chosen)
    assert len(chosen) == len(set(chosen))
    assert any(name.endswith(".mmfs") for name in chosen) and "image_start_embedding" in chosen


def test_a_trained_parameter_no_module_can_hold_is_refused():
    model = DeemForConditionalGeneration(tiny_config())
    model.register_parameter("visual_resampler_scale", nn.Parameter(torch.ones(1)))  # a bare parameter
    from trainers import stages

    stages.PARAMETER_GROUPS["image_side"] += ("visual_resampler_scale",)
    try:
        with pytest.raises(ValueError, match="visual_resampler_scale"):
            modules_trained_in_full(model, "stage2")
    finally:
        stages.PARAMETER_GROUPS["image_side"] = stages.PARAMETER_GROUPS["image_side"][:-1]
