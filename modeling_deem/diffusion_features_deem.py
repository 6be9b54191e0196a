"""The diffusion UNet as a task-aware visual backbone (seed paper 003): one UNet pass at a chosen timestep on the
noised latent of the image, conditioned on a text (the question or a caption), with the outputs of chosen
decoder blocks captured by forward hooks, resized to one grid, conditional and unconditional features combined,
and an MLP projector to the resampler's input width.

Exported as remote code: flat, sibling imports only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def feature_channels(unet_config: dict, up_blocks: list[int]) -> int:
    """Channels of the chosen up blocks' outputs (an up block outputs its reversed block_out_channels entry)."""
    reversed_channels = list(reversed(unet_config["block_out_channels"]))
    for index in up_blocks:
        if not 0 <= index < len(reversed_channels):
            raise ValueError(f"up block {index} does not exist: the UNet has {len(reversed_channels)} up blocks.")
    return sum(reversed_channels[i] for i in up_blocks)


class DiffusionFeatureExtractor(nn.Module):
    """Holds only the trainable projector; the UNet, VAE, scheduler and text encoder are the model's own (frozen
    unless LoRA adapters are added to the UNet's cross-attention) and are passed in at call time."""

    def __init__(self, config: dict, unet_config: dict, out_hidden: int) -> None:
        super().__init__()
        self.config = config
        channels = feature_channels(unet_config, config["up_blocks"])
        width = channels * (2 if config["combine"] == "concat" else 1)
        self.projector = nn.Sequential(nn.Linear(width, out_hidden), nn.GELU(), nn.Linear(out_hidden, out_hidden))

    def forward(
        self,
        unet: nn.Module,
        vae: nn.Module,
        scheduler: Any,
        text_encoder: nn.Module,
        pixel_values: torch.Tensor,
        condition_input_ids: torch.Tensor,
        condition_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`pixel_values` (N, 3, H, W) in [-1, 1] → (N, grid², out_hidden) tokens."""
        config = self.config
        count = pixel_values.shape[0]
        if condition_input_ids.shape[0] != count:
            raise ValueError(f"Got {condition_input_ids.shape[0]} conditioning texts for {count} images.")
        with torch.no_grad():
            latents = vae.encode(pixel_values.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor
            condition = text_encoder(condition_input_ids, attention_mask=condition_attention_mask)[0]
            empty = torch.tensor([config["uncond_token_ids"]], device=condition_input_ids.device)
            empty = F.pad(empty, (0, condition_input_ids.shape[1] - empty.shape[1]), value=config["pad_token_id"])
            uncond = text_encoder(empty)[0].expand_as(condition)
        if self.training and config["caption_dropout_prob"] > 0:  # learn to see without the text too
            drop = torch.rand(count, device=condition.device) < config["caption_dropout_prob"]
            condition = torch.where(drop[:, None, None], uncond, condition)
        generator = torch.Generator().manual_seed(config["noise_seed"])  # the same noise for every image and call
        noise = torch.randn(latents.shape[1:], generator=generator).to(latents)
        timesteps = torch.full((count,), config["timestep"], device=latents.device, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise.expand_as(latents), timesteps)

        captured: dict[int, torch.Tensor] = {}
        hooks = [unet.up_blocks[i].register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
                 for i in config["up_blocks"]]
        trains_unet = any(p.requires_grad for p in unet.parameters())
        try:
            with torch.set_grad_enabled(trains_unet and torch.is_grad_enabled()):
                unet(torch.cat([noisy, noisy]).to(unet.dtype), torch.cat([timesteps, timesteps]),
                     encoder_hidden_states=torch.cat([condition, uncond]).to(unet.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        grid = config["grid_size"]
        features = torch.cat([F.interpolate(captured[i].float(), size=(grid, grid), mode="bilinear",
                                            align_corners=False) for i in config["up_blocks"]], dim=1)
        conditional, unconditional = features[:count], features[count:]
        if config["combine"] == "concat":
            combined = torch.cat([conditional, unconditional], dim=1)
        else:  # classifier-free-guidance style
            combined = unconditional + config["guidance_scale"] * (conditional - unconditional)
        tokens = combined.flatten(2).transpose(1, 2)
        return self.projector(tokens.to(self.projector[0].weight.dtype))
