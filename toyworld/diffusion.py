"""Stage 0 of the toy world: its "Stable Diffusion", the frozen image decoder DEEM takes as given.

A small `AutoencoderKL` (64x64 pixels -> 4x16x16 latents) trained on the toy photographs, then a small text-to-image
`UNet2DConditionModel` trained on its scaled latents jointly with a fresh small `CLIPTextModel` on their captions,
with Stable Diffusion 2.1's DDPM training schedule. Saved as a standard diffusers `StableDiffusionPipeline` folder,
so DEEM loads it as it loads the real one: `DeemForConditionalGeneration.from_components(diffusion_model=folder)`.

    python -m toyworld.diffusion --output-dir outputs/toy-sd
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from modeling_deem.configuration_deem import SD21_DDPM_SCHEDULER_CONFIG

from .datasets import photographs
from .tokenizer import build as build_tokenizer

MAX_LENGTH = 32  # the text encoder's positions: the pipeline pads every prompt to the tokenizer's model_max_length
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "block_out_channels": [16, 32, 64], "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 16, "sample_size": 64}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 64,
    # diffusers reads `attention_head_dim` as the number of heads: 2 / 4 / 4 heads of 16 channels (8 heads of 4-8
    # channels gave the cross-attention so little room that captions hardly changed the UNet's loss).
    "attention_head_dim": [2, 4, 4], "norm_num_groups": 8, "use_linear_projection": True}  # linear projections as SD 2.1
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
    "max_position_embeddings": MAX_LENGTH, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], the VAE's input range."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def load_rows(split: str, num_rows: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Renders the rows once (the costly part) and keeps them as one uint8 tensor and their captions."""
    rows = photographs(split, num_rows=num_rows, seed=seed)
    images = torch.from_numpy(np.stack([np.asarray(images[0].convert("RGB")) for images in rows["images"]]))
    return images, list(rows["caption"])


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int,
                  warmup: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 10%: a from-scratch transformer/UNet needs the warm-up at high lr."""
    warm = max(1, int(steps * warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if s < warm else
                                             0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))


def log(part: str, step: int, steps: int, losses: list[float], every: int, start: float) -> None:
    """Mean loss of the last `every` steps and the time per step so far (the defaults are sized by it)."""
    if every and (step + 1) % every == 0:
        print(f"{part} step {step + 1}/{steps} loss {sum(losses[-every:]) / every:.4f} "
              f"({(time.time() - start) / (step + 1):.2f} s/step)", flush=True)


def train_vae(images: torch.Tensor, steps: int, batch_size: int, lr: float, kl_weight: float,
              log_every: int) -> tuple[AutoencoderKL, list[float]]:
    """Reconstruction (MSE) plus a small KL to the unit Gaussian, which keeps latents bounded. As in the LDM
    autoencoder, `kl_weight` weighs the KL summed over a latent against the error summed over its pixels: per
    pixel here, so the KL is tiny (a stronger one keeps the posterior noise near 1 and washes out colours)."""
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps)
    losses: list[float] = []
    vae.train()
    start = time.time()
    for step in range(steps):
        x = to_pixels(images[torch.randint(len(images), (batch_size,))])
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample()).sample, x) + kl_weight * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        log("vae", step, steps, losses, log_every, start)
    return vae.eval().requires_grad_(False), losses


@torch.no_grad()
def latent_moments(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The frozen encoder's posterior (mean, logvar) of every image, computed once; UNet steps sample from it."""
    return torch.cat([vae.encode(to_pixels(images[i : i + batch_size])).latent_dist.parameters
                      for i in range(0, len(images), batch_size)])


def sample_latents(moments: torch.Tensor) -> torch.Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)


def tokenize(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """As `StableDiffusionPipeline.encode_prompt` does: padded to max_length, truncated, no attention mask."""
    return tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_captions(text_encoder: CLIPTextModel, input_ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """A frozen text encoder's `last_hidden_state` of every caption, computed once."""
    return torch.cat([text_encoder(input_ids[i : i + batch_size]).last_hidden_state
                      for i in range(0, len(input_ids), batch_size)])


def train_unet(moments: torch.Tensor, input_ids: torch.Tensor, empty_ids: torch.Tensor, scaling_factor: float,
               steps: int, batch_size: int, lr: float, drop_caption: float, log_every: int,
               text_encoder: CLIPTextModel | None = None) -> tuple[UNet2DConditionModel, CLIPTextModel, list[float]]:
    """Epsilon prediction on SD 2.1's schedule, and an empty caption 10% of the time teaches the unconditional
    branch classifier-free guidance uses. Without `text_encoder` a fresh one learns with the UNet; a given one (a
    pretrained text tower, as SD's OpenCLIP) stays frozen and every caption is encoded once."""
    unet = UNet2DConditionModel(**UNET_CONFIG)
    frozen = text_encoder is not None
    if frozen:
        if text_encoder.config.hidden_size != UNET_CONFIG["cross_attention_dim"]:
            raise ValueError(f"The text encoder's width {text_encoder.config.hidden_size} is not the UNet's "
                             f"cross_attention_dim {UNET_CONFIG['cross_attention_dim']}.")
        text_encoder = text_encoder.eval().requires_grad_(False)
        caption_states, empty_states = encode_captions(text_encoder, input_ids), encode_captions(text_encoder, empty_ids)
    else:
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    scheduler = DDPMScheduler(**SD21_DDPM_SCHEDULER_CONFIG)
    parameters = [*unet.parameters(), *([] if frozen else text_encoder.parameters())]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps)
    losses: list[float] = []
    unet.train()
    text_encoder.train(not frozen)
    start = time.time()
    for step in range(steps):
        index = torch.randint(len(moments), (batch_size,))
        latents = sample_latents(moments[index]) * scaling_factor
        drop = torch.rand(batch_size) < drop_caption
        if frozen:
            states = torch.where(drop[:, None, None], empty_states, caption_states[index])
        else:
            states = text_encoder(torch.where(drop[:, None], empty_ids, input_ids[index])).last_hidden_state
        noise = torch.randn_like(latents)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, states).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        log("unet", step, steps, losses, log_every, start)
    return unet.eval(), text_encoder.eval(), losses


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """NCHW in [-1, 1] -> PIL images."""
    return [Image.fromarray(a) for a in pixels.add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()]


def grid(rows: list[list[Image.Image]]) -> Image.Image:
    """One picture per cell, rows top to bottom."""
    width, height = rows[0][0].size
    canvas = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, picture in enumerate(row):
            canvas.paste(picture, (x * width, y * height))
    return canvas


@torch.no_grad()
def evaluate(folder: Path, images: torch.Tensor, captions: list[str], seed: int, num_samples: int,
             num_inference_steps: int, guidance_scale: float) -> dict[str, float]:
    """Quality of the saved pipeline on held-out images: the VAE's reconstructions, the UNet's denoising loss with
    and without their captions (how much the text helps), and `samples.png`: test inputs, their reconstructions and
    text-to-image samples from their captions."""
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    x, generator = to_pixels(images), torch.Generator().manual_seed(seed)
    posterior = pipe.vae.encode(x).latent_dist
    reconstruction = pipe.vae.decode(posterior.mode()).sample.clamp(-1, 1)
    mse = float(F.mse_loss(reconstruction, x))
    latents = posterior.sample(generator) * pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(pipe.scheduler.config.num_train_timesteps, (len(x),), generator=generator)
    noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
    denoising = {}
    for name, texts in (("test_loss", captions), ("test_loss_without_caption", [""] * len(x))):
        prediction = pipe.unet(noisy, timesteps, pipe.text_encoder(tokenize(pipe.tokenizer, texts))[0]).sample
        denoising[name] = float(F.mse_loss(prediction, noise))

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    generated = pipe(captions[:num_samples], height=64, width=64, num_inference_steps=num_inference_steps,
                     guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed)).images
    grid([to_images(x[:num_samples]), to_images(reconstruction[:num_samples]), generated]).save(folder / "samples.png")
    (folder / "samples.json").write_text(json.dumps(captions[:num_samples], indent=2))
    # PSNR of images in [0, 1]: the [-1, 1] MSE is four times theirs
    return {"reconstruction_mse": mse, "reconstruction_psnr": 10 * math.log10(4.0 / max(mse, 1e-12)), **denoising}


def train(output_dir: str | Path, vae_steps: int = 1200, unet_steps: int = 8000, batch_size: int = 32,
          vae_batch_size: int = 16, vae_lr: float = 2e-3, unet_lr: float = 4e-3, kl_weight: float = 1e-6,
          seed: int = 0, pool_size: int = 4096, log_every: int = 50, eval_images: int = 64, num_samples: int = 8,
          num_inference_steps: int = 25, guidance_scale: float = 3.0,
          text_encoder_from: str | Path | None = None) -> dict[str, Any]:
    """Both trainings, the pipeline folder and its report; `pool_size` photographs are rendered once and reused.
    `text_encoder_from`: a toy CLIP folder whose text tower becomes the frozen text encoder (else one is trained
    with the UNet)."""
    tokenizer = build_tokenizer(for_text_encoder=True)
    tokenizer.model_max_length = MAX_LENGTH
    frozen_text_encoder = None
    if text_encoder_from is not None:  # before anything is trained or written: a wrong folder fails at once
        from .text_encoder import clip_text_encoder  # open_clip, only when asked for

        frozen_text_encoder = clip_text_encoder(text_encoder_from)
        config = frozen_text_encoder.config
        if config.vocab_size < len(tokenizer) or config.max_position_embeddings < MAX_LENGTH:
            raise ValueError(f"The text tower in {text_encoder_from} has {config.vocab_size} tokens and "
                             f"{config.max_position_embeddings} positions; the toy tokenizer needs {len(tokenizer)} "
                             f"and {MAX_LENGTH}.")
    torch.manual_seed(seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    images, captions = load_rows("train", pool_size, seed)
    data_seconds = time.time() - start

    vae, vae_losses = train_vae(images, vae_steps, vae_batch_size, vae_lr, kl_weight, log_every)
    vae_seconds = time.time() - start - data_seconds
    moments = latent_moments(vae, images)
    latent_std = float(sample_latents(moments[:512]).std())
    vae.register_to_config(scaling_factor=1.0 / latent_std)  # unit-variance diffusion latents, as SD's 0.18215

    unet_start = time.time()
    unet, text_encoder, unet_losses = train_unet(
        moments, tokenize(tokenizer, captions), tokenize(tokenizer, [""]), vae.config.scaling_factor, unet_steps,
        batch_size, unet_lr, 0.1, log_every, frozen_text_encoder)
    unet_seconds = time.time() - unet_start

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(**SD21_DDPM_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(output_dir, safe_serialization=True)

    test_images, test_captions = load_rows("test", eval_images, seed)
    quality = evaluate(output_dir, test_images, test_captions, seed, num_samples, num_inference_steps, guidance_scale)
    def part(steps: int, batch: int, lr: float, seconds: float, losses: list[float], model: torch.nn.Module) -> dict:
        return {"steps": steps, "batch_size": batch, "lr": lr, "seconds": round(seconds, 1),
                "seconds_per_step": round(seconds / max(1, steps), 3), "first_loss": losses[0] if losses else None,
                "last_loss": sum(losses[-10:]) / max(1, min(10, len(losses))), "parameters": num_parameters(model)}

    report = {
        "seed": seed, "pool_size": pool_size, "data_seconds": round(data_seconds, 1),
        "vae": {**part(vae_steps, vae_batch_size, vae_lr, vae_seconds, vae_losses, vae), "kl_weight": kl_weight,
                "latent_std": latent_std, "scaling_factor": vae.config.scaling_factor,
                **{key: quality[key] for key in ("reconstruction_mse", "reconstruction_psnr")}},
        "unet": {**part(unet_steps, batch_size, unet_lr, unet_seconds, unet_losses, unet),
                 "text_encoder_parameters": num_parameters(text_encoder),
                 "text_encoder_from": None if text_encoder_from is None else str(text_encoder_from),
                 **{key: quality[key] for key in ("test_loss", "test_loss_without_caption")}},
        "eval_images": eval_images, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
        "seconds": round(time.time() - start, 1),
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m toyworld.diffusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    # 360 VAE steps reconstructed shapes but not colours (pink came back orange, green navy); 1,200 UNet steps
    # left the captions a weak condition (test loss 0.0930 with vs 0.0942 without); 2,000 drew coloured blobs
    # (0.0171 vs 0.0188, the first study's SD), 8,000 recognisable shapes (0.0113 vs 0.0146; docs/TOY_WORLD.md).
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--unet-steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32, help="the UNet's batch")
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=4096, help="training photographs, rendered once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-encoder-from", metavar="CLIP_FOLDER",
                        help="a toy CLIP (python -m toyworld.clip) whose text tower conditions the UNet, frozen, as "
                             "OpenCLIP's does in SD 2.1; without it a text encoder is trained with the UNet")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = train(args.output_dir, args.vae_steps, args.unet_steps, args.batch_size, args.vae_batch_size,
                   seed=args.seed, pool_size=args.pool_size, text_encoder_from=args.text_encoder_from)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
