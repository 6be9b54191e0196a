"""The frozen Stable Diffusion decoder D_DM: building it from config dicts and its denoising loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def build_unet(config: dict) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_config(config)


def build_vae(config: dict) -> AutoencoderKL:
    return AutoencoderKL.from_config(config)


def build_noise_scheduler(config: dict) -> DDPMScheduler:
    """Training always uses DDPM noising (the paper's); sampling may swap in any diffusers scheduler."""
    return DDPMScheduler.from_config(config)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → scaled VAE latents (a sample of the posterior, as SD training does)."""
    latents = vae.encode(images.to(vae.dtype)).latent_dist.sample()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def noised_latents(
    scheduler: SchedulerMixin, latents: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the noise: the noisy latents at `timesteps` and the UNet's target (ε, v or the sample, as the
    scheduler predicts)."""
    noise = torch.randn_like(latents)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noisy, noise
    if prediction_type == "v_prediction":
        return noisy, scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return noisy, latents
    raise ValueError(f"Unsupported prediction_type {prediction_type!r}")


def denoising_error(
    unet: UNet2DConditionModel,
    noisy: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    condition: torch.Tensor,
    region_weights: torch.Tensor | None = None,
    unet_kwargs: dict | None = None,
) -> torch.Tensor:
    """Per-sample diffusion MSE `(N,)` of one UNet call. `region_weights` (N, h, w) restricts the error to a
    region (CSR with a mask): the mean over weighted latent positions, so a small region counts as much as a whole
    image. `unet_kwargs` go to the UNet (MMFS residuals)."""
    prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=condition.to(unet.dtype),
                      **(unet_kwargs or {})).sample
    error = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(1)
    if region_weights is None:
        return error.flatten(1).mean(1)
    weights = F.interpolate(region_weights[:, None].float(), size=error.shape[-2:], mode="area")[:, 0]
    return (error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-6)


def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    condition: torch.Tensor,
    timesteps: torch.Tensor,
    region_weights: torch.Tensor | None = None,
    unet_kwargs: dict | None = None,
) -> torch.Tensor:
    """Per-sample diffusion MSE (shape `(N,)`): `noised_latents` then `denoising_error`."""
    noisy, target = noised_latents(scheduler, latents, timesteps)
    return denoising_error(unet, noisy, target, timesteps, condition, region_weights, unet_kwargs)
