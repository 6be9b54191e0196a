"""Checkpoints DEEM can rely on: strict loading, atomic self-contained saves, the processor kept with the model.

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from .atomic_save import atomic_directory
from .model_card_deem import write_model_card

if TYPE_CHECKING:
    from .modeling_deem import DeemForConditionalGeneration

logger = logging.get_logger(__name__)
# Modules that exist only with the diffusion decoder: a checkpoint's weights for them are expected extras when a
# model is loaded with with_image_decoder=False (stage III from a stage II checkpoint).
DECODER_ONLY_PREFIXES = ("unet.", "vae.", "decoder_mmfs.", "image_to_condition.", "context_proj.",
                         "condition_resampler.", "negative_condition.")


class DeemCheckpointMixin:
    """`from_pretrained` / `save_pretrained` for `DeemForConditionalGeneration` (placed before `PreTrainedModel`)."""

    @classmethod
    def from_pretrained(cls, *args: Any, strict: bool = True, **kwargs: Any) -> DeemForConditionalGeneration:
        """As `PreTrainedModel.from_pretrained`, but strict: a checkpoint with missing, unexpected or mismatched
        weights is an error that names them (a silently re-initialised resampler or head is the worst outcome).
        The decoder-side weights of a checkpoint loaded with `with_image_decoder=False` are expected extras.
        `strict=False` loads anyway, for conversions and partial loads (`output_loading_info=True` lists what
        was missing). Loading puts fresh parameters in, so the decoder is re-frozen. A local folder's
        processor, when it has one, becomes `model.processor` (see `save_pretrained`)."""
        wants_info = kwargs.get("output_loading_info", False)
        model, info = super().from_pretrained(*args, **{**kwargs, "output_loading_info": True})
        if strict:
            model._check_loaded_keys(info)
        model.freeze_image_decoder()
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if source is not None and (Path(source) / "processor_config.json").is_file():
            model.processor = _load_processor(Path(source))
        return (model, info) if wants_info else model

    def _decoder_only_prefixes(self) -> tuple[str, ...]:
        """Where a with-decoder checkpoint holds weights this decoder-less model has no place for: the decoder
        side, and the ConvNeXt levels (adapters, deeper stages) that only the UNet's MMFS reads."""
        mine = self.config.vision_levels()
        extra = sorted(set(self.config.vision_levels(with_decoder=True)) - set(mine))
        return (DECODER_ONLY_PREFIXES + tuple(f"vision_tower.adapters.{level}." for level in extra)
                + tuple(f"vision_tower.trunk.stages.{level}." for level in extra if level > max(mine)))

    def _check_loaded_keys(self, info: dict[str, Any]) -> None:
        unexpected = set(info.get("unexpected_keys") or ())
        if not self.config.with_image_decoder:
            decoder_only = self._decoder_only_prefixes()  # once, not per key
            unexpected = {key for key in unexpected if not key.startswith(decoder_only)}
        problems = {
            "missing": sorted(info.get("missing_keys") or ()),
            "unexpected": sorted(unexpected),
            "mismatched in shape": sorted(str(item[0]) if isinstance(item, tuple) else str(item)
                                          for item in info.get("mismatched_keys") or ()),
        }
        problems = {kind: keys for kind, keys in problems.items() if keys}
        if problems:
            listed = "; ".join(f"{kind}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''} ({len(keys)})"
                               for kind, keys in problems.items())
            raise ValueError(f"The checkpoint does not fit this DEEM model ({listed}). Pass strict=False to load "
                             "it anyway (the missing parts keep their fresh initialisation).")

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, made self-contained and atomic.

        Self-contained: the model's processor (`model.processor`: the one `from_pretrained` found in its folder,
        or one you set) is saved with it, so the folder feeds `pipeline` and `python -m evaluation` as it is;
        without one, a warning says so. Atomic: the save is written beside the folder and swapped in (see
        `atomic_save`), so a kill leaves the old save or the new one, never a mix of their shards. Also maps
        `AutoModel` to this class, so both auto classes load the folder with remote code. Writes the model card
        (`README.md`, see `model_card_deem`: kept instead when the folder holds one someone wrote)."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.setdefault("AutoModel", f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}")
        self.config.auto_map = auto_map
        if not kwargs.get("is_main_process", True):
            super().save_pretrained(save_directory, *args, **kwargs)  # writes nothing; joins collective saves
            return
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).resolve().name)  # not the staging folder's name
        processor = getattr(self, "processor", None)
        with atomic_directory(save_directory) as staging:
            super().save_pretrained(staging, *args, **kwargs)
            if processor is not None:
                processor.save_pretrained(staging)
            write_model_card(staging, save_directory, self)
        if processor is None:
            logger.warning(
                "Saved without a processor: pipeline(...) and `python -m evaluation` need one in the folder. "
                "Set `model.processor = processor` before saving (or save the processor into the folder).")


def _load_processor(folder: Path) -> Any:
    """The processor saved in a model folder: the installed package's `DeemProcessor`, or, when this file runs as
    remote code, the folder's own processor code (the same repository whose model code is running)."""
    try:
        if __package__ == "modeling_deem":
            from processing import DeemProcessor

            return DeemProcessor.from_pretrained(folder)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    except (OSError, ValueError, ImportError) as error:
        logger.warning(f"Could not load the processor saved in {folder} ({error}); model.processor is None.")
        return None
