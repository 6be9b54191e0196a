from pathlib import Path

import pytest

from modeling_deem import DeemConfig, DeemVisionConfig
from modeling_deem.tiny import tiny_config, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_sizes():
    config = DeemConfig()
    assert config.text_config.model_type == "llama"
    assert config.text_config.hidden_size == 4096 and config.text_config.num_hidden_layers == 32
    assert config.vision_config.open_clip_model_name == "convnext_base_w_320"
    assert config.vision_config.open_clip_pretrained == "laion_aesthetic_s13b_b82k"
    assert config.resampler_config.num_hidden_layers == 12 and config.resampler_config.cross_attention_frequency == 2
    assert config.unet_config["cross_attention_dim"] == 1024
    assert config.num_image_tokens == 77
    assert config.nip_loss_weight == config.csr_loss_weight == 5.0
    assert config.condition_dropout_prob == 0.1
    assert config.csr_timestep_range == [200, 800]


def test_round_trip_through_json(tmp_path):
    config = tiny_config(nip_loss_weight=1.0)
    config.save_pretrained(tmp_path)
    loaded = DeemConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.unet_config == config.unet_config


def test_missing_sub_config_is_named():
    kwargs = tiny_config_dict()
    del kwargs["vae_config"]
    with pytest.raises(ValueError, match="missing vae_config"):
        DeemConfig(**kwargs)
    kwargs = tiny_config_dict()
    del kwargs["text_config"]
    with pytest.raises(ValueError, match="missing text_config"):
        DeemConfig(**kwargs)


def test_decoderless_config_needs_no_diffusion_parts():
    kwargs = {k: v for k, v in tiny_config_dict().items() if k not in ("unet_config", "vae_config", "scheduler_config")}
    config = DeemConfig(with_image_decoder=False, **kwargs)
    assert config.unet_config is None


def test_unknown_vision_tower_is_refused():
    with pytest.raises(ValueError, match="Unknown vision tower 'vit_large'"):
        DeemVisionConfig(timm_model_name="vit_large")


def test_inconsistent_widths_are_refused():
    kwargs = tiny_config_dict()
    kwargs["condition_resampler_config"] = {**kwargs["condition_resampler_config"], "hidden_size": 64}
    with pytest.raises(ValueError, match="cross_attention_dim"):
        DeemConfig(**kwargs)


def test_shipped_hub_configs_are_current():
    big = DeemConfig.from_pretrained(ROOT / "hub_configs" / "deem-7b")
    assert big.to_dict() == DeemConfig().to_dict()
    assert DeemConfig.from_pretrained(ROOT / "hub_configs" / "deem-tiny").to_dict() == tiny_config().to_dict()
