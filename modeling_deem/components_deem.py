"""Assembling DEEM from pretrained parts (a causal LM, an open_clip ConvNeXt, a Stable Diffusion), as the paper
does: the parts load 1:1, the resamplers, heads and projectors start fresh.

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPTextModel

from .configuration_deem import CONDITION_RESAMPLER_CONFIG, VISUAL_RESAMPLER_CONFIG, DeemConfig, DeemVisionConfig

if TYPE_CHECKING:
    from .modeling_deem import DeemForConditionalGeneration


class DeemComponentsMixin:
    """`from_components` for `DeemForConditionalGeneration`."""

    @classmethod
    def from_components(
        cls,
        language_model: str | os.PathLike,
        vision_model: str | None,
        diffusion_model: str | os.PathLike,
        vision_pretrained: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs: Any,
    ) -> DeemForConditionalGeneration:
        """Assemble DEEM from pretrained parts; the resamplers, heads and projectors start fresh.

        language_model: an HF causal LM (hub id or folder). Unless `image_start_token_id`/`image_token_id` are
            given, `<|startofimage|>`, `<|sniffer|>` and (if the tokenizer has none) `<pad>` get the next ids of
            its tokenizer (`tokenizer`, default: the LM's own), exactly as `DeemProcessor.from_base_tokenizer`
            adds them, and the embeddings grow to match.
        vision_model: an open_clip model name whose tower is a timm ConvNeXt (e.g. "convnext_base_w_320");
            `vision_pretrained` is its open_clip pretrained tag or a checkpoint path. Or a model folder in
            open_clip's hub layout, "local-dir:<folder>" or "hf-hub:<repo>", which holds its own weights. None with
            `vision_backbone="diffusion"`.
        diffusion_model: a diffusers Stable Diffusion folder or hub id (unet/, vae/, scheduler/; and
            text_encoder/ + tokenizer/ for a diffusion visual backbone).
        config_kwargs: other `DeemConfig` fields (resampler sizes, loss weights, image sizes, backbone, ...).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        backbone = config_kwargs.get("vision_backbone", "convnext")
        vision_overrides = config_kwargs.pop("vision_config", None) or {}
        if backbone == "diffusion":
            vision_config, trunk_state = DeemVisionConfig(**vision_overrides), None
        elif vision_model is None:
            raise ValueError(f"vision_backbone={backbone!r} needs an open_clip vision_model.")
        else:
            vision_config, trunk_state = _open_clip_trunk(vision_model, vision_pretrained, vision_overrides)
        lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(diffusion_model, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(diffusion_model, subfolder="vae", torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(diffusion_model, subfolder="scheduler")

        text_config = lm.config
        if "image_start_token_id" not in config_kwargs and "image_token_id" not in config_kwargs:
            base_tokenizer = AutoTokenizer.from_pretrained(tokenizer or language_model)
            base = len(base_tokenizer)
            config_kwargs.update(image_start_token_id=base, image_token_id=base + 1)
            added = 2
            if base_tokenizer.pad_token is None:
                text_config.pad_token_id = base + 2
                config_kwargs["pad_token_id"] = base + 2
                added = 3
            if base + added > text_config.vocab_size:
                lm.resize_token_embeddings(base + added, mean_resizing=True)
        text_encoder = None
        if backbone != "convnext":
            text_encoder = CLIPTextModel.from_pretrained(diffusion_model, subfolder="text_encoder", dtype=dtype)
            condition_tokenizer = AutoTokenizer.from_pretrained(diffusion_model, subfolder="tokenizer")
            encoder_config = text_encoder.config.to_dict()
            features = dict(config_kwargs.pop("diffusion_features_config", None) or {})
            features.setdefault("text_encoder_config", {
                k: encoder_config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "max_position_embeddings", "hidden_act",
                                               "projection_dim", "layer_norm_eps")})
            features.setdefault("uncond_token_ids", [condition_tokenizer.bos_token_id, condition_tokenizer.eos_token_id])
            features.setdefault("pad_token_id", condition_tokenizer.pad_token_id or condition_tokenizer.eos_token_id)
            config_kwargs["diffusion_features_config"] = features
        resampler = {**VISUAL_RESAMPLER_CONFIG, **(config_kwargs.pop("resampler_config", None) or {}),
                     "encoder_hidden_size": vision_config.hidden_size}
        condition = {**CONDITION_RESAMPLER_CONFIG,
                     **(config_kwargs.pop("condition_resampler_config", None) or {}),
                     "encoder_hidden_size": text_config.hidden_size,
                     "hidden_size": unet.config.cross_attention_dim}
        # Where the decoder came from (its diffusers configs drop their private `_name_or_path`): the model card
        # names it as a base model.
        config_kwargs.setdefault("diffusion_model_name_or_path", str(diffusion_model))
        config = DeemConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            resampler_config=resampler,
            condition_resampler_config=condition,
            unet_config=dict(unet.config),
            vae_config=dict(vae.config),
            scheduler_config=dict(scheduler.config),
            **config_kwargs,
        )
        model = cls(config)
        missing, unexpected = model.language_model.load_state_dict(lm.state_dict(), strict=False)
        new = [key for key in missing if ".mmfs." not in key]
        if new or unexpected:  # only the MMFS layers DEEM adds may be absent from the pretrained LM
            raise ValueError(f"The language model's weights do not fit DEEM's LLM: missing {new}, unexpected {unexpected}.")
        if trunk_state is not None:
            model.vision_tower.load_trunk_state(trunk_state)
        if text_encoder is not None:
            model.diffusion_text_encoder.load_state_dict(text_encoder.state_dict())
        model.unet.load_state_dict(unet.state_dict())
        model.vae.load_state_dict(vae.state_dict())
        return model.to(dtype) if dtype is not None else model


def _open_clip_trunk(
    name: str, pretrained: str | None, overrides: dict
) -> tuple[DeemVisionConfig, dict[str, torch.Tensor]]:
    """Build an open_clip model (weights from a tag or a checkpoint file, or a whole model folder named
    `local-dir:<path>` / `hf-hub:<repo>` as open_clip names them) and take its ConvNeXt trunk."""
    import open_clip

    schema = name.split(":", 1)[0] if name.startswith(("local-dir:", "hf-hub:")) else None
    if schema is None:
        if name not in open_clip.list_models():
            raise ValueError(f"Unknown vision tower {name!r}: not an open_clip model name (see open_clip.list_models()), "
                             "nor a 'local-dir:<folder>' / 'hf-hub:<repo>' model.")
        timm_name = open_clip.get_model_config(name)["vision_cfg"].get("timm_model_name")
        if not timm_name or not timm_name.startswith("convnext"):
            raise ValueError(f"Unknown vision tower {name!r}: DEEM needs an open_clip model with a timm ConvNeXt tower.")
    elif pretrained is not None:
        raise ValueError(f"vision_pretrained={pretrained!r} with {name!r}: a {schema} model folder holds its own weights.")
    clip = open_clip.create_model(name, pretrained=pretrained)
    trunk = getattr(clip.visual, "trunk", None)
    timm_name = getattr(trunk, "pretrained_cfg", {}).get("architecture", "") if trunk is not None else ""
    if not timm_name.startswith("convnext"):
        raise ValueError(f"Unknown vision tower {name!r}: DEEM needs an open_clip model with a timm ConvNeXt tower.")
    config = DeemVisionConfig(
        timm_model_name=timm_name,
        depths=[len(stage.blocks) for stage in trunk.stages],
        dims=[info["num_chs"] for info in trunk.feature_info],
        open_clip_model_name=name,
        open_clip_pretrained=pretrained,
        **overrides,
    )
    return config, trunk.state_dict()
