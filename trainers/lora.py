"""LoRA on DEEM's language model that keeps everything else the stage trains.

A stage recipe trains far more than the LLM: resamplers, projections, MMFS, the new-token rows. With LoRA on the
LLM those parts still train in full, so they go into peft's `modules_to_save`: the adapter folder (and every
Trainer checkpoint, and a resume) then carries them, and `PeftModel.from_pretrained(base, folder)` rebuilds the
trained model exactly. The list is computed from the recipe, as the smallest set of modules that covers every
trained non-LoRA parameter and holds nothing the stage keeps frozen.
"""

from __future__ import annotations

from torch import nn

from .stages import StageRecipe, get_stage, parameter_group

LLM_ATTENTION = r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj)"


def modules_trained_in_full(model: nn.Module, stage: str | StageRecipe) -> list[str]:
    """Names of the fewest modules whose parameters the stage trains in full (the LLM's own weights excluded:
    LoRA trains those). Raises if a trained parameter sits directly on the model, where no module can hold it."""
    recipe = get_stage(stage)

    def trained(name: str) -> bool:
        group = parameter_group(name)
        return group in recipe.learning_rates and group != "language_model"

    def cover(module_name: str, module: nn.Module) -> tuple[bool, bool, list[str]]:
        """One bottom-up pass: (holds parameters, every one of them trains in full, the fewest modules covering
        the trained ones below). peft can keep any module but the model itself and bare containers."""
        prefix = f"{module_name}." if module_name else ""
        names = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        holds, all_trained, below = bool(names), all(trained(n) for n in names), []
        for child_name, child in module.named_children():
            child_holds, child_trained, child_chosen = cover(prefix + child_name, child)
            holds, all_trained = holds or child_holds, all_trained and (child_trained or not child_holds)
            below += child_chosen
        if module_name and holds and all_trained and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            return holds, all_trained, [module_name]
        return holds, all_trained, below

    chosen = cover("", model)[2]
    covered = tuple(f"{name}." for name in chosen)
    for name, _ in model.named_parameters():
        if trained(name) and not name.startswith(covered):
            raise ValueError(f"{name!r} trains, but sits on a module that also holds frozen parameters (or on the "
                             "model itself): peft's modules_to_save cannot keep it alone.")
    return chosen


def lora_on_language_model(model: nn.Module, stage: str | StageRecipe, r: int, alpha: int) -> nn.Module:
    """`get_peft_model` with LoRA on the LLM's attention projections and the stage's other trained modules saved."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=LLM_ATTENTION,
                        modules_to_save=modules_trained_in_full(model, stage))
    return get_peft_model(model, config)
