"""The toy world's Stable Diffusion (stage 0): trains both parts, saves a diffusers pipeline folder that loads back
as a whole and part by part (as DEEM loads its decoder), and reports its quality."""

import json
import math

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
