"""Training DEEM with transformers' Trainer: the stage recipes, the collator and generated data."""

from .collator import DeemDataCollator
from .condition_alignment import ConditionAlignmentTrainer
from .deem_trainer import DeemTrainer
from .stages import STAGES, StageRecipe, apply_stage, get_stage
from .synthetic_data import make_shapes_dataset

__all__ = ["STAGES", "ConditionAlignmentTrainer", "DeemDataCollator", "DeemTrainer", "StageRecipe", "apply_stage",
           "get_stage", "make_shapes_dataset"]


def __getattr__(name: str):
    """`DeemSFTTrainer` imports TRL, so it loads on first use."""
    if name == "DeemSFTTrainer":
        from .sft_trainer import DeemSFTTrainer

        return DeemSFTTrainer
    raise AttributeError(name)
