"""MMFS on the UNet side: the denoiser also reads an image's multi-scale encoder features, ControlNet-style.

One block per UNet skip output (conv_in, every down resnet, every downsampler) and one for the mid block. Each
block's queries are the UNet's own feature map at that point (LayerNorm + 2-D sin-cos position, reference points at
the pixel centres); its deformable read of the image features goes through a zero-initialised 1×1 convolution
and is added to that feature, so the UNet starts exactly as it was. The residuals go in through diffusers' own
ControlNet inputs (`down_block_additional_residuals`, `mid_block_additional_residual`): each is a `SkipResidual`
that, when the UNet adds it to its skip feature, computes itself from that feature.
Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import initialization as init

from .mmfs_attention import MultiScaleImageAttention
from .positional_embeddings import sincos_2d


def skip_channels(unet_config: dict) -> list[int]:
    """Channels of the UNet's skip outputs in order: conv_in, then per down block its resnets and downsampler."""
    widths = list(unet_config["block_out_channels"])
    per_block = unet_config.get("layers_per_block", 2)
    per_block = [per_block] * len(widths) if isinstance(per_block, int) else list(per_block)
    channels = [widths[0]]
    for index, (width, resnets) in enumerate(zip(widths, per_block)):
        channels += [width] * resnets + ([width] if index < len(widths) - 1 else [])
    return channels


class DecoderMMFSBlock(nn.Module):
    """One UNet feature map reads the image features; output = zero-init 1×1 conv of what it read."""

    def __init__(self, channels: int, feature_dim: int, mmfs_config: dict) -> None:
        super().__init__()
        self.attention = MultiScaleImageAttention(
            channels, feature_dim, mmfs_config["attention_dim"], mmfs_config["num_heads"],
            len(mmfs_config["decoder_levels"]), mmfs_config["num_points"], mmfs_config["decoder_max_images"],
            mmfs_config["decoder_offset_init"], norm="layer", eps=1e-6,
        )
        self.zero_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        init.zeros_(self.zero_conv.weight)
        init.zeros_(self.zero_conv.bias)

    def forward(self, feature_map: torch.Tensor, values: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                has_image: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = feature_map.shape
        queries = feature_map.flatten(2).transpose(1, 2)
        position = sincos_2d(height, width, channels, feature_map.device).to(queries.dtype)
        rows = (torch.arange(height, device=queries.device, dtype=queries.dtype) + 0.5) / height
        cols = (torch.arange(width, device=queries.device, dtype=queries.dtype) + 0.5) / width
        reference = torch.stack([cols.repeat(height), rows.repeat_interleave(width)], dim=-1)
        scale = torch.tensor([width, height], dtype=queries.dtype, device=queries.device)
        visible = has_image.view(batch, 1, 1).expand(batch, height * width, 1)
        read = self.attention(queries, values, spatial_shapes, visible, reference, scale, query_position=position)
        read = read.transpose(1, 2).reshape(batch, channels, height, width)
        return self.zero_conv(read.to(self.zero_conv.weight.dtype)).to(feature_map.dtype) * has_image.view(
            batch, 1, 1, 1).to(feature_map.dtype)


@dataclass
class DecoderImageContext:
    """The image each UNet sample reads, projected once per block: values `(n, 1, S, heads, d)` per block and
    `has_image` `(n,)` (a sample without an image gets no residual)."""

    values: list[torch.Tensor]
    spatial_shapes: list[tuple[int, int]]
    has_image: torch.Tensor


class SkipResidual:
    """Stands in for a residual tensor in diffusers' ControlNet interface: `skip + SkipResidual` (what the UNet
    computes) returns `skip + block(skip)`. A batch doubled for classifier-free guidance reuses the images."""

    def __init__(self, block: DecoderMMFSBlock, values: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                 has_image: torch.Tensor) -> None:
        self.block, self.values, self.spatial_shapes, self.has_image = block, values, spatial_shapes, has_image

    def __radd__(self, feature_map: torch.Tensor) -> torch.Tensor:
        repeat = feature_map.shape[0] // self.values.shape[0]
        if repeat * self.values.shape[0] != feature_map.shape[0]:
            raise ValueError(f"UNet batch {feature_map.shape[0]} is not a multiple of the {self.values.shape[0]} "
                             "images its MMFS reads.")
        values = self.values.repeat(repeat, *([1] * (self.values.ndim - 1)))
        has_image = self.has_image.repeat(repeat)
        return feature_map + self.block(feature_map, values, self.spatial_shapes, has_image)


class DeemDecoderMMFS(nn.Module):
    """The UNet-side MMFS: `down` blocks for the skip outputs, `mid` for the mid block."""

    def __init__(self, unet_config: dict, feature_dim: int, mmfs_config: dict) -> None:
        super().__init__()
        self.down = nn.ModuleList(DecoderMMFSBlock(c, feature_dim, mmfs_config) for c in skip_channels(unet_config))
        self.mid = DecoderMMFSBlock(unet_config["block_out_channels"][-1], feature_dim, mmfs_config)

    def reset_parameters(self) -> None:
        for block in (*self.down, self.mid):
            block.reset_parameters()

    def prepare(self, features: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                has_image: torch.Tensor) -> DecoderImageContext:
        """`features` `(n, S, F)`: one image per UNet sample (rows without an image are ignored)."""
        values = [block.attention.project_features(features)[:, None] for block in (*self.down, self.mid)]
        return DecoderImageContext(values, spatial_shapes, has_image.bool())

    def unet_kwargs(self, context: DecoderImageContext | None) -> dict[str, Any]:
        """Keyword arguments for `UNet2DConditionModel.forward` that add the residuals (none without a context)."""
        if context is None or not bool(context.has_image.any()):
            return {}
        *down_values, mid_values = context.values
        down = tuple(SkipResidual(block, v, context.spatial_shapes, context.has_image)
                     for block, v in zip(self.down, down_values))
        mid = SkipResidual(self.mid, mid_values, context.spatial_shapes, context.has_image)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


class UNetWithImageFeatures(nn.Module):
    """The UNet as a diffusers pipeline sees it while MMFS reads fixed images: every call adds the residuals.
    Everything else (config, dtype, device) is the wrapped UNet's."""

    def __init__(self, unet: UNet2DConditionModel, mmfs: DeemDecoderMMFS, context: DecoderImageContext) -> None:
        super().__init__()
        self.unet, self.mmfs = unet, mmfs
        self.context = context

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.unet(*args, **kwargs, **self.mmfs.unet_kwargs(self.context))
