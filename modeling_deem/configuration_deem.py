"""Configuration of DEEM: an LLM that reads images through a ConvNeXt + resampler and a frozen Stable Diffusion
decoder that both generates images (NIP) and checks the image encoder (CSR).

Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Blip2QFormerConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import AutoConfig

# Paper sizes (DEEM, Vicuna-7B v1.5 + CLIP-ConvNeXt-B + SD 2.1 base). Vicuna's 32000 tokens plus
# `<|startofimage|>` (32000), the image placeholder `<|sniffer|>` (32001) and a padding token of its own (32002),
# as `DeemProcessor.from_base_tokenizer` adds them.
VICUNA_7B_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32003,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32002,
    "tie_word_embeddings": False,
}

VISUAL_RESAMPLER_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "cross_attention_frequency": 2,
    "encoder_hidden_size": 1024,
}

CONDITION_RESAMPLER_CONFIG: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 1,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "cross_attention_frequency": 1,
    "encoder_hidden_size": 4096,
}

SD21_BASE_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

SD21_BASE_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

SD21_DDPM_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


def check_dtype(values: dict[str, Any], where: str) -> None:
    """A config's `dtype` must name a torch dtype: transformers would fail on it later with an AttributeError."""
    for key in ("dtype", "torch_dtype"):
        value = values.get(key)
        if isinstance(value, str) and value != "auto" and not isinstance(getattr(torch, value, None), torch.dtype):
            raise ValueError(f"{where}: {key}={value!r} is not a torch dtype (e.g. 'float32', 'bfloat16', 'float16').")


class DeemResamplerConfig(Blip2QFormerConfig):
    """The visual resampler's Q-Former (a class of its own: `from_pretrained(folder)` on a DEEM folder then
    reads `resampler_config`, not whichever Q-Former config comes first)."""

    base_config_key = "resampler_config"


class DeemConditionResamplerConfig(Blip2QFormerConfig):
    """The condition resampler's Q-Former (reads `condition_resampler_config` of a DEEM folder)."""

    base_config_key = "condition_resampler_config"


class DeemVisionConfig(PretrainedConfig):
    """The image encoder: a timm ConvNeXt trunk (as open_clip builds it) plus per-level adapters.

    ``open_clip_model_name``/``open_clip_pretrained`` say where real weights come from
    (`DeemForConditionalGeneration.from_components`); ``timm_model_name`` (+ optional ``depths``/``dims``)
    fixes the architecture, so a saved model rebuilds without open_clip or a download.
    """

    model_type = "deem_vision"

    def __init__(
        self,
        timm_model_name: str = "convnext_base",
        depths: list[int] | None = None,
        dims: list[int] | None = None,
        open_clip_model_name: str | None = "convnext_base_w_320",
        open_clip_pretrained: str | None = "laion_aesthetic_s13b_b82k",
        hidden_size: int = 1024,
        feature_levels: list[int] | None = None,
        image_size: int = 256,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        drop_path_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not timm_model_name.startswith("convnext"):
            raise ValueError(
                f"Unknown vision tower {timm_model_name!r}: DEEM's image encoder is a timm ConvNeXt "
                "(e.g. 'convnext_base' as in open_clip's convnext_base_w_320)."
            )
        self.timm_model_name = timm_model_name
        self.depths = list(depths) if depths is not None else None
        self.dims = list(dims) if dims is not None else None
        self.open_clip_model_name = open_clip_model_name
        self.open_clip_pretrained = open_clip_pretrained
        self.hidden_size = hidden_size
        self.feature_levels = list(feature_levels) if feature_levels is not None else [3]
        if not self.feature_levels or any(level not in (0, 1, 2, 3) for level in self.feature_levels):
            raise ValueError(f"feature_levels must be ConvNeXt stage indices in 0..3, got {self.feature_levels}")
        self.image_size = image_size
        # CLIP's normalisation: the model turns its own generated images into encoder views with it.
        self.image_mean = list(image_mean) if image_mean is not None else [0.48145466, 0.4578275, 0.40821073]
        self.image_std = list(image_std) if image_std is not None else [0.26862954, 0.26130258, 0.27577711]
        self.drop_path_rate = drop_path_rate
        super().__init__(**kwargs)


DIFFUSION_FEATURE_DEFAULTS: dict[str, Any] = {
    "timestep": 100,
    "up_blocks": [1, 2],
    "grid_size": 16,
    "combine": "concat",
    "guidance_scale": 1.0,
    "caption_dropout_prob": 0.3,
    "noise_seed": 0,
    # SD 2.1's text encoder (OpenCLIP ViT-H/14 text tower) and its tokenizer's ids.
    "text_encoder_config": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
                            "num_hidden_layers": 23, "num_attention_heads": 16, "max_position_embeddings": 77,
                            "hidden_act": "gelu", "projection_dim": 512},
    "uncond_token_ids": [49406, 49407],
    "pad_token_id": 0,
}

# MMFS (DESIGN.md section 8), the authors' sizes. `attention_dim` None = the image features' width (1024 for
# deem-7b). Levels are ConvNeXt stage indices: the LLM reads stages 2-4, the UNet all four.
MMFS_DEFAULTS: dict[str, Any] = {
    "cross_attention_frequency": 4,
    "num_heads": 16,
    "num_points": 8,
    "attention_dim": None,
    "language_levels": [1, 2, 3],
    "decoder_levels": [0, 1, 2, 3],
    "max_images": 50,
    "decoder_max_images": 10,
    "offset_base": 16,
    "language_offset_init": 3.0,
    "decoder_offset_init": 1.0,
    "decoder": True,
}

_DIFFUSION_KEYS = ("unet_config", "vae_config", "scheduler_config")
_SUBCONFIG_KEYS = ("text_config", "vision_config", "resampler_config", "condition_resampler_config")


class DeemConfig(PretrainedConfig):
    """Configuration of `DeemForConditionalGeneration`.

    Pass every sub-config, or none of them for the paper's sizes (Vicuna-7B, ConvNeXt-B, SD 2.1 base). A config
    that names some but not all is refused: silently filling a 7B default into a tiny model is never wanted.
    The diffusers parts (UNet, VAE, noise scheduler) are plain dicts of their diffusers configs; with
    ``with_image_decoder=False`` (stage III) they may be absent and the decoder is not built.
    """

    model_type = "deem"
    sub_configs = {
        "text_config": AutoConfig,
        "vision_config": DeemVisionConfig,
        "resampler_config": DeemResamplerConfig,
        "condition_resampler_config": DeemConditionResamplerConfig,
    }

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        resampler_config: dict | PretrainedConfig | None = None,
        condition_resampler_config: dict | PretrainedConfig | None = None,
        unet_config: dict | None = None,
        vae_config: dict | None = None,
        scheduler_config: dict | None = None,
        with_image_decoder: bool = True,
        num_image_tokens: int = 77,
        image_start_token_id: int = 32000,
        image_token_id: int = 32001,
        decoder_image_size: int = 512,
        nip_loss_weight: float = 5.0,
        csr_loss_weight: float = 5.0,
        condition_dropout_prob: float = 0.1,
        fuse_diffusion_losses: bool = True,
        csr_timestep_range: list[int] | None = None,
        nip_timestep_range: list[int] | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        vision_backbone: str = "convnext",
        diffusion_features_config: dict | None = None,
        mmfs: bool | None = None,
        mmfs_config: dict | None = None,
        new_token_ids: list[int] | None = None,
        resampler_qk_norm: bool = True,
        **kwargs: Any,
    ) -> None:
        given = {k: v for k, v in zip(_SUBCONFIG_KEYS, (text_config, vision_config, resampler_config,
                                                        condition_resampler_config)) if v is not None}
        diffusion = {"unet_config": unet_config, "vae_config": vae_config, "scheduler_config": scheduler_config}
        given_diffusion = {k for k, v in diffusion.items() if v is not None}
        if not given and not given_diffusion:
            text_config, vision_config = dict(VICUNA_7B_TEXT_CONFIG), {}
            resampler_config, condition_resampler_config = dict(VISUAL_RESAMPLER_CONFIG), dict(CONDITION_RESAMPLER_CONFIG)
            if with_image_decoder:
                unet_config, vae_config = dict(SD21_BASE_UNET_CONFIG), dict(SD21_BASE_VAE_CONFIG)
                scheduler_config = dict(SD21_DDPM_SCHEDULER_CONFIG)
        else:
            required = list(_SUBCONFIG_KEYS) + (list(_DIFFUSION_KEYS) if with_image_decoder else [])
            present = set(given) | given_diffusion
            missing = [k for k in required if k not in present]
            if missing:
                raise ValueError(
                    f"DeemConfig is missing {', '.join(missing)} (got {', '.join(sorted(present))}). Pass every "
                    "sub-config, or none for the paper's default sizes"
                    + ("; set with_image_decoder=False to build without the diffusion decoder." if
                       set(missing) <= set(_DIFFUSION_KEYS) else ".")
                )

        self.text_config = self._to_config(text_config, "text_config")
        self.vision_config = self._to_config(vision_config, "vision_config")
        self.resampler_config = self._to_config(resampler_config, "resampler_config")
        self.condition_resampler_config = self._to_config(condition_resampler_config, "condition_resampler_config")
        self.unet_config = _plain_dict(unet_config)
        self.vae_config = _plain_dict(vae_config)
        self.scheduler_config = _plain_dict(scheduler_config)
        self.with_image_decoder = with_image_decoder
        self.num_image_tokens = num_image_tokens
        self.image_start_token_id = image_start_token_id
        self.image_token_id = image_token_id
        self.decoder_image_size = decoder_image_size
        self.nip_loss_weight = nip_loss_weight
        self.csr_loss_weight = csr_loss_weight
        self.condition_dropout_prob = condition_dropout_prob
        # NIP and CSR denoise in one UNet call (cheaper; the same losses); False: two calls (less peak memory).
        self.fuse_diffusion_losses = bool(fuse_diffusion_losses)
        self.csr_timestep_range = list(csr_timestep_range) if csr_timestep_range is not None else [200, 800]
        self.nip_timestep_range = list(nip_timestep_range) if nip_timestep_range is not None else None
        self.initializer_range = initializer_range
        self.vision_backbone = vision_backbone
        self.diffusion_features_config = (
            {**DIFFUSION_FEATURE_DEFAULTS, **(diffusion_features_config or {})} if vision_backbone != "convnext"
            else diffusion_features_config
        )
        # MMFS reads the ConvNeXt's maps: on by default (the paper), off by default for a diffusion-only backbone.
        self.mmfs = (vision_backbone != "diffusion") if mmfs is None else bool(mmfs)
        unknown = set(mmfs_config or {}) - set(MMFS_DEFAULTS)
        if unknown:
            raise ValueError(f"Unknown mmfs_config keys {sorted(unknown)}; known: {sorted(MMFS_DEFAULTS)}.")
        self.mmfs_config = {**MMFS_DEFAULTS, **(mmfs_config or {})}
        if self.mmfs_config["attention_dim"] is None:
            self.mmfs_config["attention_dim"] = self.vision_config.hidden_size
        self.resampler_qk_norm = resampler_qk_norm
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(key, getattr(self.text_config, key, None))
        # The tokens DEEM adds to the LLM's vocabulary (their input/output rows train while the LLM is frozen):
        # <|startofimage|>, the placeholder, and a padding token when it was added after them.
        if new_token_ids is None:
            new_token_ids = [image_start_token_id, image_token_id]
            pad = kwargs.get("pad_token_id")
            if pad is not None and pad > max(new_token_ids):
                new_token_ids.append(pad)
        self.new_token_ids = list(new_token_ids)
        check_dtype(kwargs, "DeemConfig")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._validate()

    def _to_config(self, value: dict | PretrainedConfig, key: str) -> PretrainedConfig:
        if isinstance(value, PretrainedConfig):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"DeemConfig.{key} must be a dict or a PretrainedConfig, got {type(value).__name__}")
        check_dtype(value, f"DeemConfig.{key}")
        if key == "text_config":
            value = dict(value)
            model_type = value.pop("model_type", None)
            if model_type is None:
                raise ValueError("DeemConfig.text_config needs a 'model_type' (e.g. 'llama').")
            return AutoConfig.for_model(model_type, **value)
        return self.sub_configs[key](**value)

    def _validate(self) -> None:
        checks = []
        text_hidden = self.text_config.hidden_size
        if self.vocab_size_needed() > self.text_config.vocab_size:
            checks.append(
                f"image token ids ({self.image_start_token_id}, {self.image_token_id}) must be below the language "
                f"model's vocab_size ({self.text_config.vocab_size})"
            )
        if self.image_start_token_id == self.image_token_id:
            checks.append("image_start_token_id and image_token_id must differ")
        if self.resampler_config.encoder_hidden_size != self.vision_config.hidden_size:
            checks.append(
                f"resampler_config.encoder_hidden_size ({self.resampler_config.encoder_hidden_size}) must equal "
                f"vision_config.hidden_size ({self.vision_config.hidden_size})"
            )
        if self.condition_resampler_config.encoder_hidden_size != text_hidden:
            checks.append(
                f"condition_resampler_config.encoder_hidden_size ({self.condition_resampler_config.encoder_hidden_size})"
                f" must equal the language model's hidden_size ({text_hidden})"
            )
        if self.with_image_decoder:
            cross = self.unet_config.get("cross_attention_dim")
            if self.condition_resampler_config.hidden_size != cross:
                checks.append(
                    f"condition_resampler_config.hidden_size ({self.condition_resampler_config.hidden_size}) must "
                    f"equal the UNet's cross_attention_dim ({cross})"
                )
        low, high = self.csr_timestep_range
        if not 0 <= low < high:
            checks.append(f"csr_timestep_range must be [low, high) with 0 <= low < high, got {self.csr_timestep_range}")
        if self.vision_backbone not in ("convnext", "diffusion", "both"):
            checks.append(f"vision_backbone must be 'convnext', 'diffusion' or 'both', got {self.vision_backbone!r}")
        elif self.vision_backbone != "convnext":
            features = self.diffusion_features_config
            if not self.with_image_decoder:
                checks.append(f"vision_backbone={self.vision_backbone!r} uses the diffusion UNet: keep with_image_decoder")
            elif features["text_encoder_config"].get("hidden_size") != self.cross_attention_dim:
                checks.append("diffusion_features_config.text_encoder_config.hidden_size must equal the UNet's "
                              f"cross_attention_dim ({self.cross_attention_dim})")
            if features["combine"] not in ("concat", "cfg"):
                checks.append(f"diffusion_features_config.combine must be 'concat' or 'cfg', got {features['combine']!r}")
        if self.mmfs:
            mmfs = self.mmfs_config
            for key in ("language_levels", "decoder_levels"):
                if not mmfs[key] or any(level not in (0, 1, 2, 3) for level in mmfs[key]):
                    checks.append(f"mmfs_config.{key} must be ConvNeXt stage indices in 0..3, got {mmfs[key]}")
            if self.vision_backbone == "diffusion":
                checks.append("mmfs reads the ConvNeXt's feature maps: use vision_backbone 'convnext' or 'both', "
                              "or mmfs=False")
            if mmfs["attention_dim"] % mmfs["num_heads"]:
                checks.append(f"mmfs_config.attention_dim ({mmfs['attention_dim']}) must be divisible by num_heads "
                              f"({mmfs['num_heads']})")
            if mmfs["cross_attention_frequency"] < 1:
                checks.append("mmfs_config.cross_attention_frequency must be >= 1")
        if any(not 0 <= t < self.text_config.vocab_size for t in self.new_token_ids):
            checks.append(f"new_token_ids {self.new_token_ids} must be below vocab_size ({self.text_config.vocab_size})")
        if not 0.0 <= self.condition_dropout_prob < 1.0:
            checks.append(f"condition_dropout_prob must be in [0, 1), got {self.condition_dropout_prob}")
        if checks:
            raise ValueError("Invalid DeemConfig: " + "; ".join(checks) + ".")

    def vocab_size_needed(self) -> int:
        return max(self.image_start_token_id, self.image_token_id) + 1

    @property
    def decoder_mmfs(self) -> bool:
        """Whether the UNet reads image features too (MMFS on the decoder side)."""
        return bool(self.mmfs and self.with_image_decoder and self.mmfs_config["decoder"])

    def vision_levels(self, with_decoder: bool | None = None) -> list[int]:
        """Every ConvNeXt stage the image side must project: the resampler's and MMFS's. `with_decoder`: as if
        `with_image_decoder` were that (None: this config's own)."""
        if with_decoder is None:
            with_decoder = self.with_image_decoder
        levels = set(self.vision_config.feature_levels)
        if self.mmfs:
            levels |= set(self.mmfs_config["language_levels"])
            if with_decoder and self.mmfs_config["decoder"]:
                levels |= set(self.mmfs_config["decoder_levels"])
        return sorted(levels)

    @property
    def cross_attention_dim(self) -> int | None:
        return self.unet_config.get("cross_attention_dim") if self.unet_config else None


def _plain_dict(config: dict | None) -> dict | None:
    """A diffusers config as a JSON-friendly dict without the private `_class_name`/`_diffusers_version` keys."""
    if config is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


DeemConfig.register_for_auto_class()
