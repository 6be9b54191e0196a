"""The multi-scale feature synchronizer's core (MMFS, from MM-Interleaved): queries read several images' multi-scale
feature maps by deformable sampling, with one softmax over every visible image, level and point plus a learned
"no image" sink. The sampling itself is Deformable DETR's pure-PyTorch kernel as transformers ships it.

Used twice: by the LLM's hidden states (`mmfs_language.py`) and by the UNet's skip features (`mmfs_unet.py`).
Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

# Masked logits: large enough to vanish under softmax, small enough for fp16 (the authors' −1e4).
MASKED_LOGIT = -1e4


class MultiScaleImageAttention(nn.Module):
    """Deformable cross-attention from queries to up to `max_images` images × `num_levels` feature maps.

    Per query and visible image the (normed) query goes through one shared Linear and gets a recency embedding
    (most recent visible image first); from that it predicts `num_points` sampling offsets per head (shared by the
    levels) and one logit per level and point, plus one sink logit per level whose value is zero: a query can look
    at "no image". Images a query must not see get a −1e4 logit. Output width = query width.
    """

    def __init__(
        self,
        query_dim: int,
        feature_dim: int,
        attention_dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        max_images: int,
        offset_init: float,
        norm: str = "rms",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"MMFS attention width {attention_dim} must be divisible by its {num_heads} heads.")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.max_images, self.offset_init = max_images, offset_init
        norm_cls = nn.RMSNorm if norm == "rms" else nn.LayerNorm
        self.query_norm = norm_cls(query_dim, eps=eps)
        self.feature_norm = norm_cls(feature_dim, eps=eps)
        self.image_query_proj = nn.Linear(query_dim, query_dim)
        self.recency_embedding = nn.Embedding(max_images, query_dim)
        self.sampling_offsets = nn.Linear(query_dim, num_heads * num_points * 2)
        self.attention_weights = nn.Linear(query_dim, num_heads * num_levels * (num_points + 1))
        self.value_proj = nn.Linear(feature_dim, attention_dim)
        self.output_proj = nn.Linear(attention_dim, query_dim)
        self.sampler = MultiScaleDeformableAttention()

    def reset_parameters(self) -> None:
        """The authors' init: offsets start as a spread around the reference point, value/output Xavier."""
        init.zeros_(self.sampling_offsets.weight)
        init.uniform_(self.sampling_offsets.bias, -self.offset_init, self.offset_init)
        init.normal_(self.attention_weights.weight, std=0.02)
        init.zeros_(self.attention_weights.bias)
        init.normal_(self.image_query_proj.weight, std=0.02)
        init.zeros_(self.image_query_proj.bias)
        init.trunc_normal_(self.recency_embedding.weight, std=0.02)
        for linear in (self.value_proj, self.output_proj):
            init.xavier_uniform_(linear.weight)
            init.zeros_(linear.bias)
        for norm in (self.query_norm, self.feature_norm):
            init.ones_(norm.weight)
            if getattr(norm, "bias", None) is not None:
                init.zeros_(norm.bias)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Image features `(N, S, feature_dim)` (all levels, row-major, concatenated) → values `(N, S, heads, d)`."""
        values = self.value_proj(self.feature_norm(features.to(self.value_proj.weight.dtype)))
        return values.unflatten(-1, (self.num_heads, -1))

    def forward(
        self,
        queries: torch.Tensor,
        values: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
        visible: torch.Tensor,
        reference_points: torch.Tensor,
        offset_scale: torch.Tensor,
        query_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries `(B, Q, D)`; values `(B, K, S, heads, d)`: each row's K images (`project_features`, gathered);
        `spatial_shapes`: one image's L level shapes (h, w); visible `(B, Q, K)` bool, images in order of appearance;
        reference_points `(Q, 2)` or `(B, Q, 2)` as (x, y) in [0, 1]; offset_scale `(2,)` or `(Q, 2)`: offsets are
        divided by it (in units of a grid of that size); query_position: added to the normed queries. Returns
        `(B, Q, D)`. A query that sees no image reads nothing meaningful: callers leave such queries unchanged."""
        batch, num_queries, _ = queries.shape
        num_images = visible.shape[-1]
        if num_images > self.max_images:
            raise ValueError(f"MMFS reads at most {self.max_images} images per sequence, got {num_images}.")
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"MMFS expects {levels} feature levels per image, got {len(spatial_shapes)}.")
        query = self.query_norm(queries)
        query = self.image_query_proj(query if query_position is None else query + query_position)
        rank = visible.flip(-1).long().cumsum(-1).flip(-1)  # 1 = the most recent visible image
        query = query[:, :, None] + self.recency_embedding((rank - 1).clamp(0, self.max_images - 1))

        offsets = self.sampling_offsets(query).view(batch, num_queries, num_images, heads, 1, points, 2)
        reference = reference_points.view(-1, num_queries, 1, 1, 1, 1, 2)
        scale = offset_scale.view(-1, num_queries, 1, 1, 1, 1, 2) if offset_scale.ndim == 2 else offset_scale
        locations = (reference + offsets / scale).expand(-1, -1, -1, -1, levels, -1, -1)
        locations = locations.permute(0, 1, 3, 2, 4, 5, 6).reshape(batch, num_queries, heads, num_images * levels,
                                                                   points, 2)

        logits = self.attention_weights(query).view(batch, num_queries, num_images, heads, levels * (points + 1))
        logits = logits.masked_fill(~visible[..., None, None], MASKED_LOGIT)
        weights = logits.permute(0, 1, 3, 2, 4).flatten(3).float().softmax(-1).to(values.dtype)
        weights = weights.view(batch, num_queries, heads, num_images * levels, points + 1)[..., :points]

        shapes = torch.tensor(spatial_shapes * num_images, dtype=torch.long, device=values.device)
        starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
        sampled = self.sampler(
            values.flatten(1, 2), shapes, [tuple(s) for s in spatial_shapes] * num_images, starts,
            locations.to(values.dtype).contiguous(), weights.contiguous(), im2col_step=64,
        )
        return self.output_proj(sampled.to(self.output_proj.weight.dtype))
