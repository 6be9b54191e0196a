"""Zero-shot image–text matching with a text-conditioned Stable Diffusion UNet (seed paper 003).

For an image and candidate texts, the image latent is noised at several timesteps (the same noise for every
candidate) and denoised by the UNet conditioned on each text. Two scores per candidate:

- attention: the LogSumExp over the text's tokens of the pre-softmax cross-attention logits `scale · q kᵀ`,
  averaged over query pixels and heads, over the chosen `attn2` layers and over the timesteps (higher = better);
- error: the denoising MSE, optionally divided by the unconditional (empty-text) error (lower = better).

The logits are captured by attention processors installed on the `attn2` layers only (everything else keeps its
own processor); the UNet's processors are restored afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

from .images import to_rgb

DEFAULT_TIMESTEPS = (189, 389, 589, 789, 989)


class CrossAttentionLogitCapture:
    """An `attn2` processor that records, per sample, the LogSumExp over text keys of `scale · q kᵀ`
    (mean over query positions and heads), then computes attention exactly as the default processor does."""

    def __init__(self, store: list[torch.Tensor], key_mask: torch.Tensor | None) -> None:
        self.store = store
        self.key_mask = key_mask
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        self.store.append(cross_attention_lse(attn, hidden_states, encoder_hidden_states, self.key_mask))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def cross_attention_lse(attn: Any, hidden_states: torch.Tensor, context: torch.Tensor,
                        key_mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) LogSumExp over keys of the pre-softmax logits, averaged over queries and heads."""
    if hidden_states.ndim == 4:  # (B, C, H, W) → (B, HW, C), as the processor itself does
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    batch, heads = query.shape[0], attn.heads
    query = query.view(batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
    key = key.view(batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
    logits = attn.scale * (query.float() @ key.float().transpose(-1, -2))  # (B, heads, queries, keys)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return torch.logsumexp(logits, dim=-1).mean(dim=(1, 2))


def cross_attention_layers(unet: UNet2DConditionModel, which: str = "all") -> list[str]:
    """Processor names of the `attn2` layers: all, or the last one of the down blocks, the mid block and the up
    blocks ("last")."""
    names = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    if which == "all":
        return names
    if which == "last":
        chosen = []
        for prefix in ("down_blocks.", "mid_block.", "up_blocks."):
            group = [n for n in names if n.startswith(prefix)]
            if group:
                chosen.append(group[-1])
        return chosen
    raise ValueError(f"layers must be 'all' or 'last', got {which!r}")


@dataclass
class MatchScores:
    """Per-candidate scores of one image: attention (higher = better match), error (lower = better)."""

    attention: torch.Tensor
    error: torch.Tensor


class DiffusionImageTextScorer:
    """Scores image–text pairs with a Stable Diffusion model (folder or hub id with unet/, vae/, scheduler/,
    text_encoder/, tokenizer/)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        text_encoder: Any,
        tokenizer: Any,
        timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
        layers: str = "all",
        normalize_error: bool = True,
        seed: int = 0,
        batch_size: int = 8,
        resolution: int | None = None,
    ) -> None:
        self.unet, self.vae, self.scheduler = unet.eval(), vae.eval(), scheduler
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.timesteps = list(timesteps)
        self.layer_names = cross_attention_layers(unet, layers)
        self.normalize_error = normalize_error
        self.seed = seed
        self.batch_size = batch_size
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = resolution or unet.config.sample_size * scale

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> DiffusionImageTextScorer:
        """A diffusers Stable Diffusion folder or hub id (its CLIP text encoder and tokenizer included)."""
        from transformers import AutoTokenizer, CLIPTextModel

        return cls(
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet"),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae"),
            scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler"),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
            tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
            **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").to(self.device)
        return self.text_encoder(tokens.input_ids)[0].to(self.unet.dtype), tokens.attention_mask

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The VAE posterior mean (deterministic) of the image resized to the model's resolution."""
        image = to_rgb(image).resize((self.resolution, self.resolution), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        latent = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist.mean
        return latent * self.vae.config.scaling_factor

    def noise(self, latent: torch.Tensor, step: int) -> torch.Tensor:
        """The noise of timestep index `step`: seeded, hence shared by every candidate (and every image)."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + step)
        return torch.randn(latent.shape, generator=generator).to(latent.device, latent.dtype)

    @torch.no_grad()
    def score(self, image: Image.Image, texts: Sequence[str]) -> MatchScores:
        """Scores of one image against each text; texts are processed in batches, never mixed across images."""
        if not texts:
            raise ValueError("No candidate texts to score.")
        latent = self.encode_image(image)
        embeddings, token_mask = self.encode_texts(list(texts))
        uncond = self.encode_texts([""])[0] if self.normalize_error else None
        attention = torch.zeros(len(texts), dtype=torch.float64)
        error = torch.zeros(len(texts), dtype=torch.float64)
        for step, t in enumerate(self.timesteps):
            noise = self.noise(latent, step)
            timestep = torch.tensor([t], device=self.device)
            noisy = self.scheduler.add_noise(latent, noise, timestep)
            step_errors = torch.zeros(len(texts), dtype=torch.float64)
            for start in range(0, len(texts), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                lse, errors = self._run(noisy, noise, timestep, embeddings[chunk], token_mask[chunk])
                attention[chunk] += lse.double()
                step_errors[chunk] = errors.double()
            if uncond is not None:  # relative to the empty text's error on the same noise
                predicted = self.unet(noisy, timestep, encoder_hidden_states=uncond).sample
                step_errors /= (predicted.float() - noise.float()).pow(2).mean().double().clamp_min(1e-12)
            error += step_errors
        return MatchScores(attention / len(self.timesteps), error / len(self.timesteps))

    def _run(self, noisy: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor, embeddings: torch.Tensor,
             token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = embeddings.shape[0]
        store: dict[str, list[torch.Tensor]] = {name: [] for name in self.layer_names}
        original = dict(self.unet.attn_processors)
        processors = {name: (CrossAttentionLogitCapture(store[name], token_mask) if name in store else processor)
                      for name, processor in original.items()}
        self.unet.set_attn_processor(processors)
        try:
            predicted = self.unet(noisy.expand(batch, -1, -1, -1), timestep.expand(batch),
                                  encoder_hidden_states=embeddings).sample
        finally:
            self.unet.set_attn_processor(original)
        lse = torch.stack([torch.stack(values).mean(0) for values in store.values()]).mean(0)
        errors = (predicted.float() - noise.float().expand_as(predicted)).pow(2).flatten(1).mean(1)
        return lse, errors
