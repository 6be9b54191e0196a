"""The paper's three training stages (Table 12) as recipes: what trains, which losses, which learning rates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn
from transformers import TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Parameter groups by name prefix. "vision_trunk" is the pretrained ConvNeXt; the rest of the image side is new.
PARAMETER_GROUPS: dict[str, tuple[str, ...]] = {
    "vision_trunk": ("vision_tower.trunk.",),
    "mask_extractor": ("vision_tower.mask_extractor.",),
    "image_side": ("vision_tower.adapters.", "vision_tower.norm.", "visual_resampler.", "image_to_text.",
                   "image_to_condition.", "diffusion_features."),
    "condition_side": ("context_proj.", "condition_resampler.", "negative_condition."),
    "language_model": ("language_model.",),
    "image_decoder": ("unet.", "vae.", "diffusion_text_encoder."),
    "decoder_mmfs": ("decoder_mmfs.",),
    "new_tokens": ("image_start_embedding.", "new_token_head."),
}
# MMFS groups (DESIGN.md section 8, the original's optimiser): found by name before the prefixes above, since the
# LLM's MMFS lives inside `language_model.`. Gates and sampling offsets (LLM and UNet side) get no weight decay.
NO_WEIGHT_DECAY_GROUPS = ("mmfs_gate", "mmfs_offsets")


@dataclass(frozen=True)
class StageRecipe:
    """One stage of Table 12. `learning_rates` maps parameter groups to their rate; groups absent are frozen."""

    name: str
    learning_rates: dict[str, float]
    nip_loss_weight: float
    csr_loss_weight: float
    image_size: int
    crop: str = "none"  # the image processor's geometry (see DeemImageProcessor): Table 12's augmentation
    flip: bool = False
    decoder_image_size: int = 512
    with_image_decoder: bool = True
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.05
    warmup_steps: int = 500
    max_steps: int = 10_000
    per_device_train_batch_size: int = 4
    max_length: int = 2048
    extra: dict[str, Any] = field(default_factory=dict)
    # The rate a `learning_rate` argument is measured against (it scales every group by learning_rate / this);
    # None: the highest group rate. `with_rate_multipliers` pins it, so raising one group leaves the others be.
    reference_learning_rate: float | None = None

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return tuple(self.learning_rates)

    @property
    def peak_learning_rate(self) -> float:
        return self.reference_learning_rate or max(self.learning_rates.values())

    def with_rate_multipliers(self, multipliers: dict[str, float]) -> StageRecipe:
        """This recipe with some groups' rates multiplied (e.g. {"language_model": 10}: the LLM at 10x its
        recipe rate relative to the rest, whatever `learning_rate` then scales them all by)."""
        known = {*PARAMETER_GROUPS, "diffusion_lora", "mmfs", *NO_WEIGHT_DECAY_GROUPS}
        for group, factor in multipliers.items():
            if group not in known:
                raise ValueError(f"Unknown parameter group {group!r}; known: {', '.join(sorted(known))}.")
            if group not in self.learning_rates:
                raise ValueError(f"{group!r} is frozen in {self.name}; a multiplier cannot train it.")
            if not factor > 0:
                raise ValueError(f"The learning-rate multiplier of {group!r} must be > 0, got {factor}.")
        rates = {group: rate * multipliers.get(group, 1.0) for group, rate in self.learning_rates.items()}
        return replace(self, learning_rates=rates, reference_learning_rate=self.peak_learning_rate)

    def training_arguments(self, output_dir: str, **overrides: Any) -> TrainingArguments:
        """`TrainingArguments` with this stage's optimiser and schedule; any field can be overridden."""
        values: dict[str, Any] = {
            "output_dir": output_dir,
            "learning_rate": self.peak_learning_rate,
            "adam_beta1": self.adam_betas[0],
            "adam_beta2": self.adam_betas[1],
            "adam_epsilon": self.adam_epsilon,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
            "lr_scheduler_type": "cosine",
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "remove_unused_columns": False,
            # Batches hold per-image tensors whose first dimension is not the batch size; accelerate's dispatcher
            # (used for iterable datasets) would slice them as if it were, so each process loads its own batches.
            "accelerator_config": {"dispatch_batches": False},
        }
        values.update(overrides)
        values["warmup_steps"] = self.fitted_warmup(values["warmup_steps"], values["max_steps"])
        return TrainingArguments(**values)  # an unknown override is a TypeError, not silently dropped

    def configure_processor(self, processor: Any, image_size: int | None = None, crop: str | None = None,
                            flip: bool | None = None) -> Any:
        """Give the processor this stage's input size and augmentation (an explicit value wins). Training and the
        checkpoint's saved processor then use the same geometry, so evaluation sees images as training did."""
        crop = self.crop if crop is None else crop
        if crop not in ("random", "center", "none"):
            raise ValueError(f"crop must be 'random', 'center' or 'none', got {crop!r}.")
        image_processor = processor.image_processor
        image_processor.size = self.image_size if image_size is None else int(image_size)
        image_processor.crop = crop
        image_processor.flip = self.flip if flip is None else bool(flip)
        return processor

    def fitted_warmup(self, warmup_steps: float, max_steps: int) -> float:
        """The warm-up for a run of `max_steps`. A warm-up as long as the run never reaches the learning rate, so
        a run shorter than its warm-up keeps the recipe's warm-up fraction instead (stage I: 1,000 of 10,000
        steps, 10 %; a 20-step run warms up for 2), with a warning. A fraction (< 1) is left as it is."""
        if warmup_steps < 1 or max_steps is None or max_steps <= 0 or warmup_steps < max_steps:
            return warmup_steps
        # At least one step, but shorter than the run (a one-step run: none), so the peak is reached.
        fitted = min(max(1, round(max_steps * self.warmup_steps / self.max_steps)), max_steps - 1)
        logger.warning(f"{self.name}: warmup_steps={warmup_steps:g} is not shorter than max_steps={max_steps}, so "
                       f"the learning rate would never reach its peak; warming up for {fitted} steps instead (the "
                       f"recipe's {self.warmup_steps / self.max_steps:.0%} of the run).")
        return fitted


# What MMFS and the new-token rows learn at in each stage: the original's stage I (1e-4, offsets 1e-5) and its
# stage II (MMFS, gate and offsets 5e-6; the rest new at 1e-5).
_MMFS_STAGE_ONE = {"mmfs": 1e-4, "mmfs_gate": 1e-4, "mmfs_offsets": 1e-5, "decoder_mmfs": 1e-4, "new_tokens": 1e-4}
_MMFS_SFT = {"mmfs": 5e-6, "mmfs_gate": 5e-6, "mmfs_offsets": 5e-6, "new_tokens": 1e-5}

STAGES: dict[str, StageRecipe] = {
    "stage1": StageRecipe(
        name="stage1",
        learning_rates={"vision_trunk": 2e-5, "mask_extractor": 1e-4, "image_side": 1e-4, "condition_side": 1e-4,
                        **_MMFS_STAGE_ONE},
        nip_loss_weight=5.0, csr_loss_weight=5.0, image_size=256, crop="center",
        adam_betas=(0.9, 0.995), adam_epsilon=1e-6, warmup_steps=1000,
    ),
    "stage2": StageRecipe(
        name="stage2",
        # No "condition_side": it conditions NIP only, which is off here (training it would waste optimizer state
        # and break DDP without find_unused_parameters).
        learning_rates={"language_model": 1e-6, "image_side": 1e-5, "diffusion_lora": 1e-5,
                        "decoder_mmfs": 1e-5, **_MMFS_SFT},
        nip_loss_weight=0.0, csr_loss_weight=5.0, image_size=448, per_device_train_batch_size=16,
    ),
    "stage3": StageRecipe(
        name="stage3",
        learning_rates={"language_model": 1e-6, "image_side": 1e-5, "mask_extractor": 1e-5, **_MMFS_SFT},
        nip_loss_weight=0.0, csr_loss_weight=0.0, image_size=448, with_image_decoder=False,
        per_device_train_batch_size=2,
    ),
}


def get_stage(stage: str | StageRecipe) -> StageRecipe:
    if isinstance(stage, StageRecipe):
        return stage
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
    return STAGES[stage]


def parameter_group(name: str) -> str:
    """The group a parameter belongs to (by its name in `DeemForConditionalGeneration`). LoRA adapters on the
    UNet (the diffusion backbone's cross-attention, seed paper 003) are a group of their own, "diffusion_lora";
    the LLM's MMFS is "mmfs" (its gate "mmfs_gate"), the UNet's "decoder_mmfs", and both sides' sampling offsets
    "mmfs_offsets". A PEFT-wrapped model's names (`base_model.model.…`, `modules_to_save` / `original_module`) are
    read as the plain model's (see `plain_parameter_name`)."""
    name = plain_parameter_name(name)
    if name.startswith("unet.") and "lora_" in name:
        return "diffusion_lora"
    if "sampling_offsets." in name and (".mmfs." in name or name.startswith("decoder_mmfs.")):
        return "mmfs_offsets"
    if name.startswith("language_model.") and ".mmfs." in name:
        return "mmfs_gate" if name.endswith(".mmfs.gate") else "mmfs"
    for group, prefixes in PARAMETER_GROUPS.items():
        if name.startswith(prefixes):
            return group
    raise ValueError(f"Parameter {name!r} belongs to no known group; update trainers.stages.PARAMETER_GROUPS.")


def apply_stage(model: nn.Module, stage: str | StageRecipe) -> StageRecipe:
    """Freeze everything the stage does not train and set its loss weights on the model config.

    On a PEFT-wrapped model, the language model trains through its LoRA adapters only."""
    recipe = get_stage(stage)
    if recipe.with_image_decoder and not model.config.with_image_decoder and recipe.csr_loss_weight:
        raise ValueError(f"{recipe.name} needs the diffusion decoder (CSR), but the model was built without it.")
    with_lora = hasattr(model, "peft_config")
    for name, parameter in model.named_parameters():
        group = parameter_group(name)
        trainable = group in recipe.learning_rates
        if with_lora and group == "language_model":
            trainable = trainable and "lora_" in name  # LoRA trains the adapters, never the LLM's own weights
        if PEFT_ORIGINAL in name:
            trainable = False  # peft's `modules_to_save` trains (and saves) its copy; the original stays as loaded
        parameter.requires_grad_(trainable)
    model.config.nip_loss_weight = recipe.nip_loss_weight
    model.config.csr_loss_weight = recipe.csr_loss_weight
    return recipe


PEFT_ORIGINAL = ".original_module."
_PEFT_WRAPPING = re.compile(r"\.(?:modules_to_save\.[^.]+|original_module)\.")


def plain_parameter_name(name: str) -> str:
    """A PEFT-wrapped DEEM's parameter name → the plain model's: `base_model.model.visual_resampler.
    modules_to_save.default.queries` (or `.original_module.`) → `visual_resampler.queries`."""
    return _PEFT_WRAPPING.sub(".", name.removeprefix("base_model.model."))
