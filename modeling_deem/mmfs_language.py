"""MMFS in the language model: gated deformable cross-attention from the LLM's hidden states to the multi-scale
feature maps of the images that came before each token, in every `cross_attention_frequency`-th decoder layer.

The layers are subclasses of the LLM's own decoder-layer class (made once per class), so the pretrained weights
keep their names and load unchanged, transformers' output capture still sees every layer, and nothing in
transformers is patched. For the LLaMA family (self_attn / mlp / two norms) MMFS sits where the paper's does:
after self-attention's residual, before the MLP; other decoder layers get it after the whole layer.
Exported as remote code: import siblings only with ``from .x import Y``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from .mmfs_attention import MultiScaleImageAttention

_LLAMA_LAYOUT = frozenset({"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"})


@dataclass
class ImageMemory:
    """What the MMFS layers of one forward read.

    features: `(N, S, F)` every image's MMFS feature maps (levels concatenated, row-major).
    spatial_shapes: the (h, w) of each level of one image.
    table: `(B, K)` each row's images (indices into `features`, −1 = none), in order of appearance.
    visible: `(B, Q, K)` which of its row's images each current token may read.
    value_cache: per-layer projected values kept across generation steps (None while training).
    """

    features: torch.Tensor
    spatial_shapes: list[tuple[int, int]]
    table: torch.LongTensor
    visible: torch.BoolTensor
    value_cache: dict[int, torch.Tensor] | None = field(default=None)


def image_slots(layout_ids: torch.LongTensor, image_token_id: int, per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and first-placeholder position of every image slot, in the order images are given (row-major)."""
    first = (layout_ids == image_token_id).nonzero()[::per_image]
    return first[:, 0], first[:, 1]


def document_starts(
    layout_ids: torch.LongTensor,
    bos_token_id: int | None,
    position_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.LongTensor:
    """`(B, T)`: where each token's document starts (−1 if nothing marks one before it). A document starts at a
    `<s>`, at a restart of the position ids (a packed sample, with or without BOS: the packing bounds it), or at
    a row's first attended token (left padding). `position_ids`/`attention_mask` count only when they cover the
    whole rows (not at a cached decoding step, where a row holds one document anyway)."""
    starts = torch.zeros_like(layout_ids, dtype=torch.bool)
    if bos_token_id is not None:
        starts |= layout_ids == bos_token_id
    if position_ids is not None and position_ids.shape == layout_ids.shape:
        starts |= position_ids == 0
    if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape == layout_ids.shape:
        attended = attention_mask.bool()
        starts |= attended & (attended.long().cumsum(1) == 1)
    positions = torch.arange(layout_ids.shape[1], device=layout_ids.device)
    return torch.where(starts, positions, -1).cummax(1).values


def image_visibility(
    layout_ids: torch.LongTensor,
    num_queries: int,
    image_token_id: int,
    per_image: int,
    bos_token_id: int | None,
    position_ids: torch.LongTensor | None = None,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Which images the last `num_queries` tokens of each row see: those whose first placeholder is at or before
    the token and after the start of the token's document (`document_starts`: a packed row never mixes them).

    Returns the `(B, K)` image table and the `(B, Q, K)` visibility (see `ImageMemory`)."""
    batch, length = layout_ids.shape
    rows, starts = image_slots(layout_ids, image_token_id, per_image)
    counts = torch.bincount(rows, minlength=batch)
    per_row = int(counts.max()) if len(rows) else 0
    slot = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    table = torch.full((batch, per_row), -1, dtype=torch.long, device=layout_ids.device)
    table[rows, slot] = torch.arange(len(rows), device=rows.device)
    start_table = torch.full((batch, per_row), length, dtype=torch.long, device=layout_ids.device)
    start_table[rows, slot] = starts
    window = torch.arange(length - num_queries, length, device=layout_ids.device)
    document_start = document_starts(layout_ids, bos_token_id, position_ids)[:, length - num_queries:]
    visible = (start_table[:, None, :] <= window[None, :, None]) & (start_table[:, None, :] > document_start[..., None])
    return table, visible


class DeemLanguageMMFS(nn.Module):
    """Gated MMFS for one decoder layer: `h + tanh(gate) · MMFS(h)`, gate 0 at init (the layer starts as the
    identity). Tokens that see no image are left exactly as they are."""

    def __init__(self, hidden_size: int, feature_dim: int, mmfs_config: dict, eps: float) -> None:
        super().__init__()
        self.offset_base = float(mmfs_config["offset_base"])
        self.attention = MultiScaleImageAttention(
            hidden_size, feature_dim, mmfs_config["attention_dim"], mmfs_config["num_heads"],
            len(mmfs_config["language_levels"]), mmfs_config["num_points"], mmfs_config["max_images"],
            mmfs_config["language_offset_init"], norm="rms", eps=eps,
        )
        self.gate = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()
        init.zeros_(self.gate)

    def forward(self, hidden_states: torch.Tensor, memory: ImageMemory | None) -> torch.Tensor:
        if memory is None or memory.table.shape[1] == 0:
            return hidden_states
        key = id(self)
        values = memory.value_cache.get(key) if memory.value_cache is not None else None
        if values is None:
            values = self.attention.project_features(memory.features)
            if memory.value_cache is not None:
                memory.value_cache[key] = values
        # Each row's own images; a row's empty slots (−1) point at image 0 but are never visible (weight 0).
        row_values = values[memory.table.clamp(min=0)]
        num_queries = hidden_states.shape[1]
        centre = hidden_states.new_full((num_queries, 2), 0.5)
        scale = torch.full((2,), self.offset_base, dtype=hidden_states.dtype, device=hidden_states.device)
        read = self.attention(hidden_states, row_values, memory.spatial_shapes, memory.visible, centre, scale)
        sees_image = memory.visible.any(-1, keepdim=True).to(read.dtype)
        return hidden_states + torch.tanh(self.gate).to(read.dtype) * read * sees_image


class MMFSDecoderLayerMixin:
    """Mixed in front of an LLM decoder-layer class; the layer holds its `mmfs` module and reads `image_memory`
    from the keyword arguments the decoder passes to every layer. `mmfs_inside` (set when the layer is made):
    the LLaMA layout, MMFS between self-attention and the MLP; otherwise after the whole layer."""

    mmfs: DeemLanguageMMFS
    mmfs_inside: bool

    def forward(self, hidden_states: torch.Tensor, *args: Any, image_memory: ImageMemory | None = None,
                **kwargs: Any) -> Any:
        if not self.mmfs_inside:
            output = super().forward(hidden_states, *args, **kwargs)
            if isinstance(output, tuple):
                return (self.mmfs(output[0], image_memory), *output[1:])
            return self.mmfs(output, image_memory)
        if args:
            raise TypeError("MMFS decoder layers take everything but hidden_states by keyword.")
        residual = hidden_states
        hidden_states, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        hidden_states = self.mmfs(residual + hidden_states, image_memory)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


_LAYER_CLASSES: dict[type, type] = {}


def mmfs_layer_class(base: type) -> type:
    """`<Base>WithMMFS`, made once per decoder-layer class (so `isinstance(layer, Base)` stays true)."""
    if base not in _LAYER_CLASSES:
        _LAYER_CLASSES[base] = type(f"{base.__name__}WithMMFS", (MMFSDecoderLayerMixin, base), {"__module__": __name__})
    return _LAYER_CLASSES[base]


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    decoder = language_model.get_decoder()
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"MMFS cannot find the decoder layers of {type(language_model).__name__} "
                     "(no ModuleList named layers, h or blocks); build it with mmfs=False.")


def add_mmfs_layers(language_model: nn.Module, feature_dim: int, mmfs_config: dict) -> list[DeemLanguageMMFS]:
    """Give every `cross_attention_frequency`-th decoder layer (0, f, 2f, ...) an MMFS; returns the new modules."""
    text_config = language_model.config
    eps = getattr(text_config, "rms_norm_eps", None) or getattr(text_config, "layer_norm_eps", None) or 1e-6
    layers = decoder_layers(language_model)
    added = []
    for index in range(0, len(layers), mmfs_config["cross_attention_frequency"]):
        layer = layers[index]
        cls = mmfs_layer_class(type(layer))
        upgraded = cls.__new__(cls)
        upgraded.__dict__.update(layer.__dict__)
        for slot in ("_parameters", "_buffers", "_modules"):
            upgraded.__dict__[slot] = dict(layer.__dict__[slot])
        upgraded.mmfs_inside = set(layer._modules) == _LLAMA_LAYOUT
        upgraded.mmfs = DeemLanguageMMFS(text_config.hidden_size, feature_dim, mmfs_config, eps)
        layers[index] = upgraded
        added.append(upgraded.mmfs)
    return added
