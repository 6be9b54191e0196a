"""Perceiver-style resamplers built on transformers' Q-Former: learned queries cross-attend to a token set."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerMultiHeadAttention


class QKNormQFormerAttention(Blip2QFormerMultiHeadAttention):
    """Q-Former attention with the authors' `qk_normalization`: one LayerNorm over the head dimension (shared by
    the heads) on queries and keys after the head split, which keeps the logits bounded as the encoder trains."""

    def __init__(self, config: Blip2QFormerConfig, is_cross_attention: bool = False) -> None:
        super().__init__(config, is_cross_attention)
        self.query_norm = nn.LayerNorm(self.attention_head_size, eps=config.layer_norm_eps)
        self.key_norm = nn.LayerNorm(self.attention_head_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
        cross = encoder_hidden_states is not None
        source = encoder_hidden_states if cross else hidden_states
        mask = encoder_attention_mask if cross else attention_mask
        heads = (-1, self.attention_head_size)
        query = self.query_norm(self.query(hidden_states).unflatten(-1, heads)).transpose(1, 2)
        key = self.key_norm(self.key(source).unflatten(-1, heads)).transpose(1, 2)
        value = self.value(source).unflatten(-1, heads).transpose(1, 2)
        output = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0,
            scale=self.scaling,
        )
        return output.transpose(1, 2).flatten(2), None


class DeemResampler(nn.Module):
    """`num_queries` learned queries read a variable-length token set through a `Blip2QFormerModel`.

    Used twice: the visual resampler (image tokens → 77 tokens, with `qk_norm` as in the original) and the
    condition resampler (reversed LLM context → 77 UNet condition tokens).
    """

    def __init__(self, config: Blip2QFormerConfig, num_queries: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, config.hidden_size))
        self.qformer = Blip2QFormerModel(config)
        if qk_norm:
            for layer in self.qformer.encoder.layer:
                layer.attention.attention = QKNormQFormerAttention(config)
                if getattr(layer, "has_cross_attention", False):
                    layer.crossattention.attention = QKNormQFormerAttention(config, is_cross_attention=True)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        output = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=tokens,
            encoder_attention_mask=attention_mask,
            return_dict=True,
        )
        return output.last_hidden_state
