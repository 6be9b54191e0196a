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

    modules = dict(model.named_modules())
    all_trained: dict[str, bool] = {}  # module name → every parameter under it is trained in full
    for module_name, module in modules.items():
        names = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters()]
        all_trained[module_name] = bool(names) and all(trained(n) for n in names)
    chosen: list[str] = []

    def cover(module_name: str, module: nn.Module) -> None:
        # peft can keep any module but the model itself and bare containers (ModuleList/ModuleDict).
        if module_name and all_trained[module_name] and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            chosen.append(module_name)
            return
        for child_name, child in module.named_children():
            cover(f"{module_name}.{child_name}" if module_name else child_name, child)

    cover("", model)
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
