"""The tiny DEEM used by the tests and the demo: every part real, every size minimal (builds in well under 1 s)."""

from __future__ import annotations

from typing import Any

from .configuration_deem import SD21_DDPM_SCHEDULER_CONFIG, DeemConfig

# Token ids of the project's tiny tokenizer (hub_configs/deem-tiny): specials first, then a small BPE vocabulary.
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|startofimage|>", "<|sniffer|>"]
TINY_VOCAB_SIZE = 512


def tiny_config_dict() -> dict[str, Any]:
    """Keyword arguments of `DeemConfig` for the tiny model."""
    return {
        "text_config": {
            "model_type": "llama",
            "vocab_size": TINY_VOCAB_SIZE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "timm_model_name": "convnext_atto",
            "depths": [1, 1, 1, 1],
            "dims": [8, 16, 32, 64],
            "open_clip_model_name": None,
            "open_clip_pretrained": None,
            "hidden_size": 32,
            "feature_levels": [2, 3],
            "image_size": 64,
        },
        "resampler_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 32,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "condition_resampler_config": {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 32,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "unet_config": {
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": [16, 32],
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae_config": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [8, 16],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 32,
            "scaling_factor": 0.18215,
        },
        "scheduler_config": dict(SD21_DDPM_SCHEDULER_CONFIG),  # the real noise schedule: CSR draws t in [200, 800)
        # MMFS at tiny sizes: the LLM's layer 0 of 2 (every 2nd layer), 4 heads, 2 points per level.
        "mmfs_config": {"cross_attention_frequency": 2, "num_heads": 4, "num_points": 2, "max_images": 8,
                        "decoder_max_images": 2},
        "image_start_token_id": 4,
        "image_token_id": 5,
        "decoder_image_size": 32,
    }


def tiny_config(**overrides: Any) -> DeemConfig:
    return DeemConfig(**{**tiny_config_dict(), **overrides})
