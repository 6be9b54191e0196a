"""DEEM's processor: tokenizer + image processor + chat template and the paper's prompt presets."""

from transformers import AutoImageProcessor, AutoProcessor

from modeling_deem import DeemConfig

from .image_processing_deem import DeemImageProcessor
from .processing_deem import DeemDiffusionProcessor, DeemProcessor
from .prompts_deem import CHAT_TEMPLATE, PROMPT_PRESETS, SYSTEM_PROMPT, preset_prompt

AutoImageProcessor.register(DeemConfig, DeemImageProcessor, exist_ok=True)
AutoProcessor.register(DeemConfig, DeemProcessor, exist_ok=True)

__all__ = ["CHAT_TEMPLATE", "DeemDiffusionProcessor", "PROMPT_PRESETS", "SYSTEM_PROMPT", "DeemImageProcessor", "DeemProcessor", "preset_prompt"]
