"""The image encoder E_V: a timm ConvNeXt trunk, per-level adapters, and the mask-aware extractor E_M."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .configuration_deem import DeemVisionConfig
from .positional_embeddings import sincos_2d


def build_convnext_trunk(config: DeemVisionConfig) -> nn.Module:
    """The ConvNeXt exactly as open_clip's `TimmModel` holds it (`visual.trunk`), so its weights load 1:1."""
    if not timm.is_model(config.timm_model_name):
        raise ValueError(f"Unknown vision tower {config.timm_model_name!r}: timm has no such model.")
    overrides = {}
    if config.depths is not None:
        overrides["depths"] = tuple(config.depths)
    if config.dims is not None:
        overrides["dims"] = tuple(config.dims)
    return timm.create_model(
        config.timm_model_name,
        pretrained=False,
        num_classes=0,
        global_pool="",
        drop_path_rate=config.drop_path_rate,
        **overrides,
    )


class DeemMaskExtractor(nn.Module):
    """E_M: a region mask multiplies the grid tokens, and a mask-pooled token summarises the region.

    Without a mask the mask is all ones (the paper's default), so the token layout never changes.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.pool_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, grid_tokens: torch.Tensor, grid_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`grid_tokens` (N, L, D), `grid_mask` (N, L) in [0, 1] → masked tokens and one pooled token (N, 1, D)."""
        weights = grid_mask.unsqueeze(-1).to(grid_tokens.dtype)
        masked = grid_tokens * weights
        pooled = masked.sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        return masked, self.pool_proj(pooled)


class DeemVisionTower(nn.Module):
    """Image → resampler input tokens: [pooled cls, mask-pooled region, grid tokens of each chosen level].

    Each ConvNeXt stage in `levels` (default: the resampler's `feature_levels`; MMFS adds the stages it reads) is
    projected to `hidden_size` by its own adapter and gets a fixed 2-D sin-cos position embedding; the cls token is
    the mean of the deepest resampler level.
    """

    def __init__(self, config: DeemVisionConfig, levels: list[int] | None = None) -> None:
        super().__init__()
        self.config = config
        self.trunk = build_convnext_trunk(config)
        channels = [info["num_chs"] for info in self.trunk.feature_info]
        self.levels = sorted(set(levels or config.feature_levels) | set(config.feature_levels))
        # Only the stages up to the deepest level read are used: the classifier head's norm (and any deeper
        # stage) would be trainable parameters that never get a gradient, so they are not built.
        self.trunk.prune_intermediate_layers(indices=self.levels, prune_norm=True, prune_head=True)
        self.adapters = nn.ModuleDict(
            {str(level): nn.Linear(channels[level], config.hidden_size) for level in self.levels}
        )
        self.norm = nn.LayerNorm(config.hidden_size)
        self.mask_extractor = DeemMaskExtractor(config.hidden_size)

    def load_trunk_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full ConvNeXt's weights (open_clip's `visual.trunk`) into the pruned trunk: every kept tensor
        must be there; only the parts pruned away may be left over."""
        missing = sorted(set(self.trunk.state_dict()) - set(state))  # checked first: nothing half-loaded
        if missing:
            raise ValueError(f"The ConvNeXt weights lack {missing[:8]}{' ...' if len(missing) > 8 else ''}.")
        self.trunk.load_state_dict(state, strict=False)

    @property
    def native_modules(self) -> nn.Module:
        """The part whose initialisation is timm's own (kept when transformers initialises the rest)."""
        return self.trunk

    def forward(
        self, pixel_values: torch.Tensor, image_masks: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, tuple[int, int]], tuple[torch.Tensor, ...] | None]:
        """The resampler's input tokens, every adapted level's map `(N, h*w, hidden)` (with its position
        embedding, unmasked: what MMFS reads), each level's (h, w), and, when asked, the ConvNeXt's hidden
        states as transformers' ConvNext returns them (the stem's output, then each stage's)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (num_images, 3, height, width), got shape {tuple(pixel_values.shape)}"
            )
        if image_masks is not None and (image_masks.ndim != 3 or image_masks.shape[0] != pixel_values.shape[0]):
            raise ValueError(
                f"image_masks must be (num_images, height, width) with one mask per image "
                f"({pixel_values.shape[0]}), got shape {tuple(image_masks.shape)}"
            )
        pixel_values = pixel_values.to(next(self.trunk.parameters()).dtype)
        hidden_states = None
        if output_hidden_states:  # the same computation as forward_intermediates, keeping every stage
            states = [self.trunk.stem(pixel_values)]
            for stage in self.trunk.stages:
                states.append(stage(states[-1]))
            hidden_states = tuple(states)
            maps = [states[level + 1] for level in self.levels]
        else:
            maps = self.trunk.forward_intermediates(pixel_values, indices=self.levels, intermediates_only=True)
        level_tokens, level_shapes = {}, {}
        for level, feature_map in zip(self.levels, maps):
            _, _, height, width = feature_map.shape
            level_shapes[level] = (height, width)
            tokens = self.adapters[str(level)](feature_map.flatten(2).transpose(1, 2))
            level_tokens[level] = tokens + sincos_2d(height, width, tokens.shape[-1], tokens.device).to(tokens.dtype)
        grid_tokens, grid_masks = [], []
        for level in sorted(self.config.feature_levels):
            tokens = level_tokens[level]
            height, width = level_shapes[level]
            grid_tokens.append(tokens)
            if image_masks is None:
                grid_masks.append(tokens.new_ones(tokens.shape[:2]))
            else:
                resized = F.interpolate(image_masks[:, None].float(), size=(height, width), mode="area")
                grid_masks.append(resized.flatten(1).to(tokens.dtype))
        cls = grid_tokens[-1].mean(1, keepdim=True)
        grid = torch.cat(grid_tokens, dim=1)
        masked, region = self.mask_extractor(grid, torch.cat(grid_masks, dim=1))
        return self.norm(torch.cat([cls, region, masked], dim=1)), level_tokens, level_shapes, hidden_states
