"""DEEM for transformers: `DeemConfig` and `DeemForConditionalGeneration`, registered with the auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_deem import DeemConfig, DeemVisionConfig
from .modeling_deem import DeemCausalLMOutputWithPast, DeemForConditionalGeneration, DeemImageFeatures

AutoConfig.register(DeemConfig.model_type, DeemConfig, exist_ok=True)
AutoConfig.register(DeemVisionConfig.model_type, DeemVisionConfig, exist_ok=True)
AutoModel.register(DeemConfig, DeemForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(DeemConfig, DeemForConditionalGeneration, exist_ok=True)

__all__ = [
    "DeemCausalLMOutputWithPast",
    "DeemConfig",
    "DeemForConditionalGeneration",
    "DeemImageFeatures",
    "DeemVisionConfig",
]
