"""The toy world's Stable Diffusion (stage 0): trains both parts, saves a diffusers pipeline folder that loads back
as a whole and part by part (as DEEM loads its decoder), and reports its quality."""

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from modeling_deem.configuration_deem import SD21_DDPM_SCHEDULER_CONFIG
from toyworld import diffusion as toy_sd


def test_toy_diffusion_trains_saves_and_loads_back_as_a_stable_diffusion_pipeline(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits, and on a busy machine it waits long
    try:
        report = toy_sd.train(tmp_path, vae_steps=2, unet_steps=2, batch_size=4, vae_batch_size=2, pool_size=16,
                              log_every=0, eval_images=4, num_samples=2, num_inference_steps=2)
    finally:
        torch.set_num_threads(threads)
    assert report == json.loads((tmp_path / "report.json").read_text())
    vae_report, unet_report = report["vae"], report["unet"]
    for part in (vae_report, unet_report):
        assert {"steps", "seconds", "first_loss", "last_loss", "parameters"} <= part.keys()
        assert math.isfinite(part["first_loss"]) and math.isfinite(part["last_loss"])
    for value in (vae_report["reconstruction_mse"], vae_report["reconstruction_psnr"], unet_report["test_loss"],
                  unet_report["test_loss_without_caption"]):
        assert math.isfinite(value)
    assert vae_report["parameters"] <= 700_000 and unet_report["parameters"] <= 1_500_000

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.safety_checker is None and pipe.tokenizer.model_max_length == 32
    assert {k: pipe.scheduler.config[k] for k in SD21_DDPM_SCHEDULER_CONFIG} == SD21_DDPM_SCHEDULER_CONFIG
    assert DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.beta_schedule == "scaled_linear"
    unet = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(tmp_path, subfolder="vae")
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 64
    assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size

    # the scaling factor came from the trained latents (not SD's 0.18215): 1 / their std
    assert vae.config.scaling_factor == vae_report["scaling_factor"] == 1 / vae_report["latent_std"]
    images, _ = toy_sd.load_rows("train", 16, 0)
    latents = toy_sd.sample_latents(toy_sd.latent_moments(vae, images)) * vae.config.scaling_factor
    assert 0.5 < float(latents.std()) < 2.0
    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size == (2 * 64, 3 * 64)


def _encode_with_open_clip(model, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's token features before pooling: what SD reads from OpenCLIP's text tower."""
    x = model.token_embedding(ids) + model.positional_embedding[: ids.shape[1]]
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))


def test_the_toy_clips_text_tower_converts_exactly_and_conditions_the_toy_sd_frozen(tmp_path):
    from toyworld import clip as toy_clip
    from toyworld.text_encoder import clip_text_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        toy_clip.train(tmp_path / "clip", steps=2, batch_size=4, log_every=0, eval_images=8)
        model, _, tokenizer = toy_clip.load(tmp_path / "clip")
        encoder = clip_text_encoder(tmp_path / "clip")
        ids = tokenizer(["A red star on a white background.", "Two blue circles.", ""])
        with torch.no_grad():
            expected, got = _encode_with_open_clip(model, ids), encoder(ids).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert (got[0] - got[1]).abs().max() > 0.1  # different captions, different features
        assert not any(p.requires_grad for p in encoder.parameters())
        # the SD tokenizer and the CLIP's give the same ids, so the pipeline feeds the tower what it learned on
        sd_tokenizer = toy_sd.build_tokenizer(for_text_encoder=True)
        sd_tokenizer.model_max_length = toy_sd.MAX_LENGTH
        assert torch.equal(toy_sd.tokenize(sd_tokenizer, ["Two blue circles.", ""]), ids[1:])

        from toyworld.text_encoder import _text_config

        model.attn_mask = None  # a tower CLIPTextModel cannot express is refused, not converted approximately
        with pytest.raises(ValueError, match="no causal mask"):
            _text_config(model, 1, 2, 3)

        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        report = toy_sd.train(tmp_path / "sd", vae_steps=1, unet_steps=2, batch_size=4, vae_batch_size=2,
                              pool_size=16, log_every=0, eval_images=4, num_samples=2, num_inference_steps=2,
                              text_encoder_from=tmp_path / "clip")
    finally:
        torch.set_num_threads(threads)
    assert report["unet"]["text_encoder_from"] == str(tmp_path / "clip")
    saved = StableDiffusionPipeline.from_pretrained(tmp_path / "sd").text_encoder
    assert all(torch.equal(value, before[key]) for key, value in saved.state_dict().items())  # never trained
    with pytest.raises(FileNotFoundError, match="holds no toy CLIP"):
        toy_sd.train(tmp_path / "bad", unet_steps=1, text_encoder_from=tmp_path / "no-clip")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
